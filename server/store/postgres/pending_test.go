package postgres

import (
	"fmt"
	"slices"
	"testing"
)

func TestPendingNames(t *testing.T) {
	drain := func(p *pendingNames) []string {
		var got []string
		for {
			name, ok := p.take()
			if !ok {
				return got
			}
			got = append(got, name)
		}
	}
	for _, c := range []struct {
		name string
		add  []string
		want []string
	}{
		{"names not yet taken wait in the order they came", []string{"a", "b", "c"}, []string{"a", "b", "c"}},
		{"a name waits once however often it comes", []string{"a", "b", "a", "a"}, []string{"a", "b"}},
		{"a reconnection stands for every name until it is taken", []string{"a", "", "b"}, []string{""}},
		{"nothing waiting is nothing to take", nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := &pendingNames{wake: make(chan struct{}, 1), set: map[string]bool{}}
			for _, n := range c.add {
				p.add(n)
			}
			if got := drain(p); !slices.Equal(got, c.want) {
				t.Fatalf("took %q, want %q", got, c.want)
			}
		})
	}
	t.Run("more names than it keeps become one look at every name", func(t *testing.T) {
		p := &pendingNames{wake: make(chan struct{}, 1), set: map[string]bool{}}
		for i := range maxPendingNames + 10 {
			p.add(fmt.Sprint("n", i))
		}
		if len(p.names) > maxPendingNames || len(p.set) > maxPendingNames {
			t.Fatalf("%d names kept, want at most %d", len(p.names), maxPendingNames)
		}
		got := drain(p)
		if len(got) == 0 || got[0] != "" || len(got) > maxPendingNames+1 {
			t.Fatalf("took %d names starting %q, want \"\" first and at most %d", len(got), got[:min(len(got), 1)], maxPendingNames+1)
		}
	})
	t.Run("every add wakes the reader", func(t *testing.T) {
		p := &pendingNames{wake: make(chan struct{}, 1), set: map[string]bool{}}
		p.add("a")
		select {
		case <-p.wake:
		default:
			t.Fatal("add did not wake the reader")
		}
	})
}
