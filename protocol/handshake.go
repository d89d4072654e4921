package protocol

import (
	"fmt"
	"regexp"
)

// MaxTokenLen bounds Hello.Token; real tokens are far shorter.
const MaxTokenLen = 256

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether name can be a tunnel name: one DNS label.
func ValidName(name string) bool { return labelRE.MatchString(name) }

// Check validates a Hello received from the network and returns the Reject
// to send when it is not acceptable.
func (h Hello) Check() *Reject {
	if h.Version != Version {
		return &Reject{Code: RejectVersionMismatch, Version: Version,
			Message: fmt.Sprintf("agent speaks protocol %d, server speaks protocol %d: install the same relay release on both sides", h.Version, Version)}
	}
	if h.Token == "" {
		return &Reject{Code: RejectBadToken, Version: Version, Message: "no token given: pass --token or set RELAY_TOKEN"}
	}
	if len(h.Token) > MaxTokenLen {
		return &Reject{Code: RejectBadToken, Version: Version, Message: "token too long"}
	}
	if h.Name != "" && !ValidName(h.Name) {
		return &Reject{Code: RejectBadRequest, Version: Version,
			Message: fmt.Sprintf("name %q is not a DNS label (a-z, 0-9, '-', at most 63)", h.Name)}
	}
	return nil
}
