package netlinkx

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// VethSpec describes a veth pair created in one RTM_NEWLINK request: the
// host end in the calling thread's namespace, already attached to a bridge
// and up, the peer created directly inside another namespace (still down).
type VethSpec struct {
	Name        string           // host end
	MAC         net.HardwareAddr // host end; nil lets the kernel choose
	MasterIndex int              // bridge the host end joins; 0 for none
	MTU         int              // both ends; 0 keeps the kernel default
	PeerName    string
	PeerMAC     net.HardwareAddr // nil lets the kernel choose
	PeerNSFd    int              // namespace of the peer; -1 for the current one
	Group       uint32           // device group of the host end (IFLA_GROUP); 0 is the default
}

// CreateVeth creates the pair described by s in one kernel round trip.
// The error of an existing name wraps unix.EEXIST.
func CreateVeth(s VethSpec) error {
	return Do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Flags = unix.IFF_UP
		msg.Change = unix.IFF_UP
		req.AddData(msg)
		req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(s.Name)))
		if s.MTU > 0 {
			req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(s.MTU))))
		}
		if s.MAC != nil {
			req.AddData(nl.NewRtAttr(unix.IFLA_ADDRESS, []byte(s.MAC)))
		}
		if s.Group != 0 {
			req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(s.Group)))
		}
		if s.MasterIndex > 0 {
			req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(s.MasterIndex))))
		}
		info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
		info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
		data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
		peer := data.AddRtAttr(nl.VETH_INFO_PEER, nil)
		// The peer cannot be set up here: the kernel configures it before
		// the pair is joined, and opening an unpaired veth fails.
		nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
		peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(s.PeerName))
		if s.MTU > 0 {
			peer.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(s.MTU)))
		}
		if s.PeerMAC != nil {
			peer.AddRtAttr(unix.IFLA_ADDRESS, []byte(s.PeerMAC))
		}
		if s.PeerNSFd >= 0 {
			peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(s.PeerNSFd)))
		}
		req.AddData(info)
		if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
			return fmt.Errorf("create veth %s (peer %s): %w", s.Name, s.PeerName, err)
		}
		return nil
	})
}
