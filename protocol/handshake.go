package protocol

import "fmt"

// MaxTokenLen bounds Hello.Token; real tokens are far shorter.
const MaxTokenLen = 256

// ValidName reports whether name can be a tunnel name: one lowercase DNS
// label of letters, digits and inner hyphens. The store, the certificate
// policy and the handshake all ask this one function, so garbage never
// reaches the store or an ACME order.
func ValidName(name string) bool {
	if name == "" || len(name) > 63 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

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
