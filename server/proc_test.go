package server_test

import (
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"

	"github.com/relaytunnel/relay/internal/relaytest"
)

// proc is a relay process that a test kills the way a machine dies
// (SIGKILL to its process group: no GoAway, no lease given up) and may
// start again with the same args.
type proc struct {
	t    *testing.T
	name string
	args []string
	// out, when set, collects the output of every start; else
	// RELAY_FAULT_VERBOSE sends it to the test's stderr.
	out  *relaytest.Buffer
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// nodeProc is a relay server node of the cluster on database, listening
// and advertised at addr with its data in dir; it is not started yet.
func nodeProc(t *testing.T, bin, database, name, addr, dir string) *proc {
	return &proc{t: t, name: name, args: []string{bin, "server", "--dev", "--listen", addr, "--data", dir,
		"--database", database, "--node-name", name, "--advertise", addr, "--node-lease", relaytest.ClusterLease.String()}}
}

func (p *proc) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(p.args[0], p.args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if p.out != nil {
		cmd.Stdout, cmd.Stderr = p.out, p.out
	} else if os.Getenv("RELAY_FAULT_VERBOSE") != "" {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
}

func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

func (p *proc) exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return true
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}
