// Package endpoint is the contract between the weft CNI plugin and weftd's
// policy controller: one JSON record per pod attachment, named after the
// host-side veth, in a directory (DefaultDir on a node). The plugin writes a
// record on ADD before it returns and removes it on DEL; weftd lists and
// watches the directory and matches records to Pods by namespace, name and
// UID (for a static pod, the mirror Pod's kubernetes.io/config.mirror
// annotation). weftd rebuilds missing records at start from the IPAM store,
// the host veth names and the node's Pods (policy/rebuild.go). While an
// ADD runs the plugin holds the container's ADD lock in the same directory
// (LockAdd), so weftd never takes an address allocated a moment ago, whose
// record is not written yet, for a leak.
//
// It is also the client side of weftd's local socket: the plugin's wait
// until a pod's rules are programmed (WaitProgrammed) and CNI STATUS
// (Status), at the paths weftd's route table serves (daemon/api).
package endpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/weftnet/weft/internal/atomicfile"
	"github.com/weftnet/weft/internal/endpoint/record"
)

// DefaultDir is where records live on a node.
const DefaultDir = "/run/weft/endpoints"

// Endpoint is one pod attachment on this node (the record's type lives in
// the pure package record, so the policy renderer can take it).
type Endpoint = record.Endpoint

// Write stores ep atomically (internal/atomicfile; List skips its
// temporary files) as dir/<hostVeth>.json,
// creating dir if needed.
func Write(dir string, ep Endpoint) error {
	if err := ep.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("endpoint: create dir: %w", err)
	}
	data, err := json.Marshal(ep)
	if err != nil {
		return fmt.Errorf("endpoint: encode: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, ep.HostVeth+".json"), data, 0o600); err != nil {
		return fmt.Errorf("endpoint: %w", err)
	}
	return nil
}

// Remove deletes the record for hostVeth; a missing record is not an error.
func Remove(dir, hostVeth string) error {
	if err := record.ValidName(hostVeth); err != nil {
		return err
	}
	err := os.Remove(filepath.Join(dir, hostVeth+".json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("endpoint: remove %s: %w", hostVeth, err)
	}
	return nil
}

// List returns every valid record in dir, sorted by host interface name. A
// missing dir is an empty list. Records that cannot be decoded are skipped
// and reported in the returned error (joined) alongside the good ones.
func List(dir string) ([]Endpoint, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("endpoint: list %s: %w", dir, err)
	}
	var out []Endpoint
	var errs []error
	for _, de := range ents {
		name := de.Name()
		if de.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed while listing
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint: read %s: %w", name, err))
			continue
		}
		var ep Endpoint
		if err := json.Unmarshal(data, &ep); err != nil {
			errs = append(errs, fmt.Errorf("endpoint: decode %s: %w", name, err))
			continue
		}
		if ep.HostVeth+".json" != name {
			errs = append(errs, fmt.Errorf("endpoint: %s names host interface %q", name, ep.HostVeth))
			continue
		}
		if err := ep.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].HostVeth < out[j].HostVeth })
	return out, errors.Join(errs...)
}

// Read returns the record for hostVeth, and false when there is none.
func Read(dir, hostVeth string) (Endpoint, bool, error) {
	var ep Endpoint
	if err := record.ValidName(hostVeth); err != nil {
		return ep, false, err
	}
	data, err := os.ReadFile(filepath.Join(dir, hostVeth+".json"))
	if errors.Is(err, os.ErrNotExist) {
		return ep, false, nil
	}
	if err != nil {
		return ep, false, fmt.Errorf("endpoint: read %s: %w", hostVeth, err)
	}
	if err := json.Unmarshal(data, &ep); err != nil {
		return ep, false, fmt.Errorf("endpoint: decode %s: %w", hostVeth, err)
	}
	return ep, true, nil
}
