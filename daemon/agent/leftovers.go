package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/podnet"
)

// Owned name prefixes (DESIGN.md, "Own names").
const (
	chainPrefix  = "WEFT-"
	setPrefix    = "weft-"
	devicePrefix = "weft."
)

// NodeLeftovers removes weft's links, chains and sets from the caller's
// network namespace (NetNS, when set, is entered with nsenter for the
// iptables and ipset tools; links are always the caller's).
type NodeLeftovers struct {
	NetNS string
}

// DeleteLinks implements Leftovers.
func (NodeLeftovers) DeleteLinks(bridge string) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		n := l.Attrs().Name
		own := (l.Type() == "veth" && strings.HasPrefix(n, podnet.HostVethPrefix)) ||
			(n == bridge && l.Type() == "bridge") || strings.HasPrefix(n, devicePrefix)
		if !own {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// SweepTables implements Leftovers. A tool that is not installed is
// skipped; one that fails is an error.
func (x NodeLeftovers) SweepTables(ctx context.Context) error {
	var errs []error
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
			tool := fam + "-" + string(mode)
			save, err := x.run(ctx, "", tool+"-save")
			if errors.Is(err, exec.ErrNotFound) {
				continue
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			script, err := sweepScript(save)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s-save: %w", tool, err))
				continue
			}
			if script == "" {
				continue
			}
			args := []string{"--noflush"}
			if mode == iptables.Legacy {
				args = append(args, "--wait", "10")
			}
			if _, err := x.run(ctx, script, tool+"-restore", args...); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(append(errs, x.sweepSets(ctx))...)
}

// sweepSets destroys every weft-* ipset (after the rules using them).
func (x NodeLeftovers) sweepSets(ctx context.Context) error {
	out, err := x.run(ctx, "", "ipset", "list", "-n")
	if errors.Is(err, exec.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, n := range strings.Fields(out) {
		if strings.HasPrefix(n, setPrefix) {
			fmt.Fprintf(&b, "flush %s\ndestroy %s\n", n, n)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	_, err = x.run(ctx, b.String(), "ipset", "restore")
	return err
}

func (x NodeLeftovers) run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	if _, err := exec.LookPath(name); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, name, args...)
	if x.NetNS != "" {
		cmd = exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + x.NetNS, "--", name}, args...)...)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// sweepScript turns an iptables-save dump (all tables) into the
// iptables-restore --noflush input that removes weft's part: every rule of
// another chain that jumps or goes to a WEFT-* chain or matches a weft-*
// set, then every WEFT-* chain (all flushed before any is deleted, as they
// may refer to each other). "" when there is nothing of weft's.
func sweepScript(save string) (string, error) {
	var out strings.Builder
	var table string
	var dels, chains []string
	flush := func() {
		if len(dels) == 0 && len(chains) == 0 {
			return
		}
		fmt.Fprintf(&out, "*%s\n", table)
		for _, d := range dels {
			out.WriteString(d + "\n")
		}
		for _, c := range chains {
			out.WriteString("-F " + c + "\n")
		}
		for _, c := range chains {
			out.WriteString("-X " + c + "\n")
		}
		out.WriteString("COMMIT\n")
	}
	sc := bufio.NewScanner(strings.NewReader(save))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			table, dels, chains = line[1:], nil, nil
		case line == "COMMIT":
			flush()
			table = ""
		case strings.HasPrefix(line, ":"+chainPrefix):
			if f := strings.Fields(line[1:]); len(f) > 0 && !slices.Contains(chains, f[0]) {
				chains = append(chains, f[0])
			}
		case strings.HasPrefix(line, "-A "):
			args, err := iptables.SplitArgs(line)
			if err != nil {
				return "", err
			}
			if len(args) > 2 && !strings.HasPrefix(args[1], chainPrefix) && refersToWeft(args[2:]) {
				dels = append(dels, "-D"+strings.TrimPrefix(line, "-A"))
			}
		}
	}
	return out.String(), sc.Err()
}

// refersToWeft reports whether a rule's arguments jump or go to a WEFT-*
// chain or match a weft-* set.
func refersToWeft(args []string) bool {
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-j", "--jump", "-g", "--goto":
			if strings.HasPrefix(args[i+1], chainPrefix) {
				return true
			}
		case "--match-set":
			if strings.HasPrefix(args[i+1], setPrefix) {
				return true
			}
		}
	}
	return false
}
