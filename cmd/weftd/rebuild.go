package main

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/ipam/store"
	"github.com/weftnet/weft/ipam/store/disk"
	"github.com/weftnet/weft/policy"
)

// ipamAttachments reads weft-ipam's disk store of the node's network (a
// shared lock, no write) for the policy engine's record rebuild.
type ipamAttachments struct {
	store *disk.Store
}

// Attachments implements policy.AttachmentSource: one entry per address.
func (i ipamAttachments) Attachments(ctx context.Context) ([]policy.Attachment, error) {
	var out []policy.Attachment
	err := i.store.View(ctx, func(st *store.State) error {
		for _, a := range st.Allocations {
			out = append(out, policy.Attachment{ContainerID: a.ContainerID, IfName: a.IfName, IPs: []netip.Addr{a.IP}})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipam store %s: %w", i.store.Dir(), err)
	}
	return out, nil
}
