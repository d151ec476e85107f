package rules

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// Fixed chain names. weftd owns WEFT-FWD-ACCEPT and WEFT-MASQ-CLUSTER; these
// are the policy engine's own.
const (
	ChainForward = "WEFT-POL-FWD"   // jumped to from FORWARD
	ChainCheck   = "WEFT-POL-CHECK" // conntrack, then from/to dispatch
	ChainFrom    = "WEFT-POL-FROM"  // dispatch by source endpoint (egress)
	ChainTo      = "WEFT-POL-TO"    // dispatch by destination endpoint (ingress)
	ChainInput   = "WEFT-POL-IN"    // jumped to from INPUT: the source check for packets to the node
	ChainSource  = "WEFT-POL-SRC"   // anti-spoofing: the source address must be the veth's pod's
	ChainSpoof   = "WEFT-POL-SPOOF" // the source check's one DROP

	// SpoofComment is the comment of the source check's DROP (in
	// WEFT-POL-SPOOF), whose packet counter counts packets from local pods
	// with a forged source address.
	SpoofComment = "spoofed source or unknown endpoint"

	// MaxChainName is iptables' limit on chain names.
	MaxChainName = 28
	// MaxSetName is ipset's limit on set names.
	MaxSetName = 31

	// ChainPrefix and SetPrefix mark everything the policy engine owns.
	ChainPrefix = "WEFT-"
	SetPrefix   = "weft-"
	// JumpComment identifies our jump rules in built-in chains.
	JumpComment = "weft-policy-jump"
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

func shortHash(key string, n int) string {
	sum := sha256.Sum256([]byte(key))
	return strings.ToLower(b32.EncodeToString(sum[:]))[:n]
}

// chainName returns prefix+readable when it fits and uses only safe
// characters, otherwise prefix + a hash of key (key defaults to readable).
func chainName(prefix, readable, key string) string {
	if key == "" && len(prefix)+len(readable) <= MaxChainName && safeName(readable) {
		return prefix + readable
	}
	if key == "" {
		key = readable
	}
	return prefix + shortHash(prefix+key, MaxChainName-len(prefix))
}

func safeName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// FromChain and ToChain name the chains of one endpoint: traffic from its
// host veth (egress) and to it (ingress).
func FromChain(veth string) string { return chainName("WEFT-FROM-", veth, "") }
func ToChain(veth string) string   { return chainName("WEFT-TO-", veth, "") }

// Policy chains: "WEFT-PI-<ns>.<name>" / "WEFT-PE-..." when short; a hash
// otherwise, or when the content depends on the endpoint (variant != "").
func policyChain(dir direction, ns, name, variant string) string {
	prefix := "WEFT-PI-"
	if dir == egress {
		prefix = "WEFT-PE-"
	}
	readable := ns + "." + name
	if variant != "" {
		return chainName(prefix, readable, readable+"\x00"+variant)
	}
	return chainName(prefix, readable, "")
}

// Set names: "weft-p-" (pods, hash:ip) or "weft-n-" (CIDRs, hash:net)
// followed by a hash of the set's identity, so membership changes keep
// the name (and the rules that use it) unchanged. 27 characters, which
// leaves room for the swap temp name "weft-t-<same hash>".
const setHashLen = 20

func podSetName(key string) string { return "weft-p-" + shortHash("p"+key, setHashLen) }
func netSetName(key string) string { return "weft-n-" + shortHash("n"+key, setHashLen) }

// TempSetName is the scratch set used to swap in new members of name.
func TempSetName(name string) string {
	if len(name) > 7 && strings.HasPrefix(name, SetPrefix) {
		return "weft-t-" + name[7:]
	}
	return "weft-t-" + shortHash(name, setHashLen)
}
