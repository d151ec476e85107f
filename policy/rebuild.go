package policy

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/podnet"

	"github.com/weftnet/weft/policy/rules"
)

// Rebuilding endpoint records. A weftd without policy never made the plugin
// write records, and a lost /run/weft loses them too; without a record a
// pod's veth meets the "unknown local endpoint" DROP in both directions. So
// before its first sync the controller rebuilds each missing record from
// what the node already has: the host veth (its name is a hash of container
// ID and ifname), the IPAM store's allocation for that container ID and
// ifname (the addresses), and the Pod on this node holding those addresses
// (namespace, name, UID). A veth that cannot be tied to exactly one Pod this
// way gets no record: it fails closed, and is logged.

// Attachment is one attachment as the node's IPAM store records it.
type Attachment struct {
	ContainerID, IfName string
	IPs                 []netip.Addr
}

// AttachmentSource lists the attachments of the node's IPAM store (weftd
// reads weft-ipam's disk store).
type AttachmentSource interface {
	Attachments(ctx context.Context) ([]Attachment, error)
}

// HostVethLister lists weft's host veths on the pod bridge.
type HostVethLister interface {
	HostVeths() ([]string, error)
}

// EndpointRebuild is what the controller rebuilds missing records from.
type EndpointRebuild struct {
	Attachments AttachmentSource
	Veths       HostVethLister
}

// Unmatched is a host veth without a record that could not be rebuilt.
type Unmatched struct {
	HostVeth, ContainerID string
	IPs                   []netip.Addr
	Why                   string
}

// rebuildRecords computes the records to write for veths that have none.
// Pods are matched by address among those on node that are neither
// host-network nor finished.
func rebuildRecords(node string, veths []string, atts []Attachment, pods []*corev1.Pod,
	have []endpoint.Endpoint) ([]endpoint.Endpoint, []Unmatched) {
	known := make(map[string]bool, len(have))
	for _, e := range have {
		known[e.HostVeth] = true
	}
	byVeth := map[string]*Attachment{}
	for i := range atts {
		a := &atts[i]
		v := podnet.HostVethName(a.ContainerID, a.IfName)
		if prev, ok := byVeth[v]; ok { // one allocation per address: merge
			prev.IPs = append(prev.IPs, a.IPs...)
			continue
		}
		cp := *a
		cp.IPs = append([]netip.Addr(nil), a.IPs...)
		byVeth[v] = &cp
	}
	byIP := map[netip.Addr][]*corev1.Pod{}
	for _, p := range pods {
		if (node != "" && p.Spec.NodeName != node) || rules.SkipPod(p) {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				byIP[a] = append(byIP[a], p)
			}
		}
	}
	var out []endpoint.Endpoint
	var miss []Unmatched
	for _, v := range veths {
		if known[v] {
			continue
		}
		a := byVeth[v]
		if a == nil {
			miss = append(miss, Unmatched{HostVeth: v, Why: "no IPAM allocation for this veth"})
			continue
		}
		p, why := podFor(a.IPs, byIP)
		if p == nil {
			miss = append(miss, Unmatched{HostVeth: v, ContainerID: a.ContainerID, IPs: a.IPs, Why: why})
			continue
		}
		out = append(out, recordFor(v, a, p))
	}
	return out, miss
}

// podFor returns the one Pod holding the addresses, or why there is none.
func podFor(ips []netip.Addr, byIP map[netip.Addr][]*corev1.Pod) (*corev1.Pod, string) {
	var found *corev1.Pod
	for _, ip := range ips {
		for _, p := range byIP[ip] {
			if found != nil && found.UID != p.UID {
				return nil, fmt.Sprintf("pods %s/%s and %s/%s both claim %s", found.Namespace, found.Name, p.Namespace, p.Name, ip)
			}
			found = p
		}
	}
	if found == nil {
		return nil, fmt.Sprintf("no running Pod on this node has address %v", ips)
	}
	return found, ""
}

func recordFor(veth string, a *Attachment, p *corev1.Pod) endpoint.Endpoint {
	uid := string(p.UID)
	if m := p.Annotations[rules.MirrorAnnotation]; m != "" {
		uid = m // what kubelet passes as K8S_POD_UID for a static pod
	}
	ep := endpoint.Endpoint{ContainerID: a.ContainerID, IfName: a.IfName, PodNamespace: p.Namespace, PodName: p.Name,
		PodUID: uid, HostVeth: veth}
	sort.Slice(a.IPs, func(i, j int) bool { return a.IPs[i].Less(a.IPs[j]) })
	for _, ip := range a.IPs {
		ep.IPs = append(ep.IPs, ip.String())
	}
	return ep
}

// rebuildEndpoints writes the records rebuildRecords finds missing. Errors
// are logged: a record that cannot be rebuilt fails closed, as before.
func (c *Controller) rebuildEndpoints(ctx context.Context) {
	rb := c.cfg.Rebuild
	have, err := endpoint.List(c.cfg.EndpointDir)
	if err != nil {
		c.log.Warn("endpoint records skipped", "err", err)
	}
	veths, err := rb.Veths.HostVeths()
	if err != nil {
		c.log.Error("rebuild endpoint records: list host veths", "err", err)
		return
	}
	atts, err := rb.Attachments.Attachments(ctx)
	if err != nil {
		c.log.Error("rebuild endpoint records: read IPAM allocations", "err", err)
		return
	}
	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		c.log.Error("rebuild endpoint records: list pods", "err", err)
		return
	}
	write, miss := rebuildRecords(c.cfg.NodeName, veths, atts, pods, have)
	var written []endpoint.Endpoint
	for _, ep := range write {
		if err := endpoint.Write(c.cfg.EndpointDir, ep); err != nil {
			c.log.Error("rebuild endpoint record", "veth", ep.HostVeth, "err", err)
			continue
		}
		written = append(written, ep)
	}
	c.dropRecordsOfGoneVeths(written)
	for _, m := range miss {
		c.log.Warn("pod attachment without endpoint record: its traffic is dropped until a record exists (DEL, GC or a new ADD)",
			"veth", m.HostVeth, "containerID", m.ContainerID, "ips", m.IPs, "why", m.Why)
	}
}

// dropRecordsOfGoneVeths removes the rebuilt records whose veth a DEL
// removed while they were being computed: DEL deletes the veth before it
// releases the address and forgets the record, so a veth still there now
// will have its record removed by that DEL, and a record written after
// DEL forgot it would otherwise keep a released address. It logs the
// records that stay.
func (c *Controller) dropRecordsOfGoneVeths(written []endpoint.Endpoint) {
	if len(written) == 0 {
		return
	}
	now, err := c.cfg.Rebuild.Veths.HostVeths()
	if err != nil {
		c.log.Warn("rebuild endpoint records: re-list host veths", "err", err)
		return // keep them: removing a live pod's record would cut it off
	}
	live := make(map[string]bool, len(now))
	for _, v := range now {
		live[v] = true
	}
	for _, ep := range written {
		if !live[ep.HostVeth] {
			if err := endpoint.Remove(c.cfg.EndpointDir, ep.HostVeth); err != nil {
				c.log.Error("remove rebuilt record of a deleted veth", "veth", ep.HostVeth, "err", err)
			}
			continue
		}
		c.log.Info("rebuilt endpoint record", "veth", ep.HostVeth, "pod", ep.PodNamespace+"/"+ep.PodName, "ips", ep.IPs)
	}
}

// BridgeVeths lists weft's host veths (HostVethPrefix) attached to Bridge
// in the network namespace at NetNS ("" = the caller's).
type BridgeVeths struct {
	NetNS, Bridge string
}

// HostVeths implements HostVethLister.
func (b BridgeVeths) HostVeths() ([]string, error) {
	var out []string
	list := func() error {
		out = nil
		h, err := netlinkx.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		links, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		br := 0
		for _, l := range links {
			if l.Attrs().Name == b.Bridge && l.Type() == "bridge" {
				br = l.Attrs().Index
			}
		}
		for _, l := range links {
			a := l.Attrs()
			if br != 0 && l.Type() == "veth" && a.MasterIndex == br && strings.HasPrefix(a.Name, podnet.HostVethPrefix) {
				out = append(out, a.Name)
			}
		}
		return nil
	}
	if b.NetNS == "" {
		err := list()
		return out, err
	}
	err := ns.WithNetNSPath(b.NetNS, func(ns.NetNS) error { return list() })
	return out, err
}
