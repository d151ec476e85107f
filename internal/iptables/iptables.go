// Package iptables is a narrow exec shim over the iptables, ip6tables and
// ipset userspace tools: detect which iptables backend (legacy or nft) a
// network namespace uses, load rules with one `iptables-restore --noflush`
// transaction, read them back with `iptables-save`, and load / read ipsets;
// plus the save parser and the comment conventions. It knows nothing about
// what the rules mean: the one writer of Weft's chains is the table
// subpackage.
package iptables

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Mode is the iptables backend.
type Mode string

// The two backends. A node uses one; mixing them splits the ruleset.
const (
	Legacy Mode = "legacy"
	NFT    Mode = "nft"
)

// Runner runs the tools, optionally inside the network namespace at NetNS
// (a path such as /run/netns/x, entered through nsenter). With IPv6 the
// rules go through ip6tables (of the same mode); ipsets are unaffected.
type Runner struct {
	Mode  Mode
	NetNS string
	IPv6  bool
}

func (r Runner) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if r.NetNS != "" {
		return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + r.NetNS, "--", name}, args...)...)
	}
	return exec.CommandContext(ctx, name, args...)
}

func (r Runner) run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	cmd := r.command(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func (r Runner) tool(base string) (string, error) {
	switch r.Mode {
	case Legacy, NFT:
		fam := "iptables-"
		if r.IPv6 {
			fam = "ip6tables-"
		}
		return fam + string(r.Mode) + "-" + base, nil
	default:
		return "", fmt.Errorf("iptables: unknown mode %q", r.Mode)
	}
}

// Restore loads text with `iptables-restore --noflush`, waiting for the
// xtables lock. The text must carry its own *table and COMMIT lines.
func (r Runner) Restore(ctx context.Context, text string) error {
	bin, err := r.tool("restore")
	if err != nil {
		return err
	}
	args := []string{"--noflush"}
	if r.Mode == Legacy {
		args = append(args, "--wait", "10")
	}
	if _, err := r.run(ctx, text, bin, args...); err != nil {
		return fmt.Errorf("iptables restore (%s): %w", r.Mode, err)
	}
	return nil
}

// Save returns `iptables-save -t table`.
func (r Runner) Save(ctx context.Context, table string) (string, error) {
	return r.save(ctx, "-t", table)
}

// SaveCounters returns `iptables-save -c -t table`: each rule line starts
// with its "[packets:bytes]" counters (ParseSave reads them).
func (r Runner) SaveCounters(ctx context.Context, table string) (string, error) {
	return r.save(ctx, "-c", "-t", table)
}

func (r Runner) save(ctx context.Context, args ...string) (string, error) {
	bin, err := r.tool("save")
	if err != nil {
		return "", err
	}
	out, err := r.run(ctx, "", bin, args...)
	if err != nil {
		return "", fmt.Errorf("iptables save (%s): %w", r.Mode, err)
	}
	return out, nil
}

// IPSetRestore feeds text to `ipset restore`.
func (r Runner) IPSetRestore(ctx context.Context, text string) error {
	if _, err := r.run(ctx, text, "ipset", "restore"); err != nil {
		return fmt.Errorf("ipset restore: %w", err)
	}
	return nil
}

// IPSetSave returns `ipset save` (every set in the namespace).
func (r Runner) IPSetSave(ctx context.Context) (string, error) {
	out, err := r.run(ctx, "", "ipset", "save")
	if err != nil {
		return "", fmt.Errorf("ipset save: %w", err)
	}
	return out, nil
}

// Detect decides which backend the namespace uses: the one holding more
// rules (as kube-proxy's iptables-wrapper does); with no rules in either,
// the system default that `iptables -V` reports.
func Detect(ctx context.Context, netns string) (Mode, error) {
	counts := map[Mode]int{}
	for _, m := range []Mode{Legacy, NFT} {
		r := Runner{Mode: m, NetNS: netns}
		bin, _ := r.tool("save")
		out, err := r.run(ctx, "", bin)
		if err != nil {
			continue // backend unusable here
		}
		counts[m] = countRules(out)
	}
	switch {
	case counts[Legacy] > counts[NFT]:
		return Legacy, nil
	case counts[NFT] > counts[Legacy]:
		return NFT, nil
	}
	out, err := Runner{NetNS: netns}.run(ctx, "", "iptables", "-V")
	if err != nil {
		return "", fmt.Errorf("iptables: detect mode: %w", err)
	}
	if strings.Contains(out, "nf_tables") {
		return NFT, nil
	}
	return Legacy, nil
}

func countRules(save string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "-A ") {
			n++
		}
	}
	return n
}
