// Package nodeapi is the contract of weftd's operational API, the one
// weftctl reads through the apiserver's proxy to the weft pods: the paths,
// the request and answer types, and the header that carries the caller's
// bearer token through the proxy. weftd serves these paths (daemon/api
// authenticates and authorizes every request with TokenReview and
// SubjectAccessReview); weftctl is their client.
package nodeapi

// Paths of the operational API (HTTPS, default port 9413). Each is also a
// non-resource URL of the SubjectAccessReview weftd asks for a request:
// verb "get" for GET, "post" for POST, as the apiserver names them.
const (
	MetricsPath = "/metrics"
	NodePath    = "/v1/node"         // GET: NodeStatus
	IPAMPath    = "/v1/ipam"         // GET: IPAM
	ReleasePath = "/v1/ipam/release" // POST ReleaseRequest: ReleaseResult
	TracePath   = "/v1/policy/trace" // POST TraceRequest: TraceAnswer (read-only)
	ProbePath   = "/v1/probe"        // POST ProbeRequest: ProbeResult (sends traffic)
	BGPPath     = "/v1/bgp"          // GET: BGP
	DefaultPort = 9413
)

// TokenHeader carries "Bearer <token>" when the request comes through the
// apiserver's proxy: the apiserver authenticates the caller with the
// Authorization header and removes it before proxying, so weftctl sends
// its weftd token (audience Audience, never the caller's own credential)
// here. weftd reads Authorization first.
const TokenHeader = "X-Weft-Authorization"

// Audience is the only token audience weftd accepts: weftctl asks the
// TokenRequest API for a short-lived token of ReaderServiceAccount or
// OperatorServiceAccount (in weft's namespace) bound to it. The apiserver
// refuses such a token, and weftd refuses the apiserver's own tokens, so a
// token seen on a node is worth nothing elsewhere.
const Audience = "weft.dev/weftd"

// The ServiceAccounts weftctl takes tokens of: the reader's for every
// read-only path, the operator's for ReleasePath and ProbePath.
const (
	ReaderServiceAccount   = "weft-ctl-reader"
	OperatorServiceAccount = "weft-ctl-operator"
)

// NodeStatus is a node's readiness as its weftd sees it.
type NodeStatus struct {
	Node    string   `json:"node"`
	Ready   bool     `json:"ready"`
	Reasons []string `json:"reasons,omitempty"` // condition: reason, when not ready
	Details []string `json:"details,omitempty"` // informational lines of /readyz
}

// Allocation is one address of weft-ipam's store on a node, with the pod
// the plugin recorded for it (empty when there is no endpoint record).
type Allocation struct {
	IP           string `json:"ip"`
	ContainerID  string `json:"containerID"`
	IfName       string `json:"ifname"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	PodUID       string `json:"podUID,omitempty"`
	HostVeth     string `json:"hostVeth,omitempty"`
	// Adding: no record yet because the container's CNI ADD is still
	// running (it holds its ADD lock): not a leak, and not releasable.
	Adding bool `json:"adding,omitempty"`
}

// IPAM is a node's allocations.
type IPAM struct {
	Node        string       `json:"node"`
	Allocations []Allocation `json:"allocations"`
}

// ReleaseRequest frees one address, only while it is still held by the
// named container (so a release never frees an address reused meanwhile).
type ReleaseRequest struct {
	IP          string `json:"ip"`
	ContainerID string `json:"containerID"`
}

// ReleaseResult says what the node removed.
type ReleaseResult struct {
	Released      int  `json:"released"`
	RecordRemoved bool `json:"recordRemoved"`
}

// Flow is one packet to trace: a new connection from Src to Dst.
type Flow struct {
	Src   string `json:"src"`
	Dst   string `json:"dst"`
	Proto string `json:"proto"` // tcp, udp, sctp
	Port  uint16 `json:"port"`
}

// TraceRequest asks a node to trace flows through the rules it programmed.
type TraceRequest struct {
	Flows []Flow `json:"flows"`
}

// Hit is one rule the packet matched.
type Hit struct {
	Chain   string `json:"chain"`
	Index   int    `json:"index"`
	Rule    string `json:"rule"`
	Comment string `json:"comment,omitempty"`
}

// Trace is one flow's walk on one node. Local says which end is a pod of
// this node: "source" (egress was traced), "destination" (ingress),
// "both", or "none" (nothing to trace here: Verdict is "pass").
type Trace struct {
	Flow    Flow   `json:"flow"`
	Local   string `json:"local"`
	Verdict string `json:"verdict"` // accept, drop, pass
	Allowed bool   `json:"allowed"`
	Hits    []Hit  `json:"hits,omitempty"`
}

// TraceAnswer is a node's traces, in the order of the request.
type TraceAnswer struct {
	Node   string  `json:"node"`
	Traces []Trace `json:"traces"`
}

// ProbeRequest asks a node to connect from one of its pods to an address.
type ProbeRequest struct {
	FromNamespace string `json:"fromNamespace"`
	FromPod       string `json:"fromPod"`
	To            string `json:"to"` // ip
	Port          uint16 `json:"port"`
	Proto         string `json:"proto"`     // tcp or udp
	TimeoutMS     int    `json:"timeoutMs"` // default 1000, at most 10000
}

// ProbeResult is one probe's outcome. A TCP probe is allowed when the
// connection opens; a UDP probe when a reply comes back. Reply is the first
// line the server sent, if any.
type ProbeResult struct {
	Allowed bool   `json:"allowed"`
	Reply   string `json:"reply,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// BGPSession is one BGP session of a node.
type BGPSession struct {
	Peer  string `json:"peer"`
	ASN   uint32 `json:"asn,omitempty"`
	State string `json:"state"`
}

// BGPRoute is one route the node learned and accepted.
type BGPRoute struct {
	Prefix  string `json:"prefix"`
	NextHop string `json:"nextHop"`
}

// BGP is a node's BGP view; Running is false when the bgp backend is not
// the one in effect.
type BGP struct {
	Node     string       `json:"node"`
	Running  bool         `json:"running"`
	Sessions []BGPSession `json:"sessions,omitempty"`
	Routes   []BGPRoute   `json:"routes,omitempty"`
}
