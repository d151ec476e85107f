package ipip

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Mode is the IP-in-IP implementation.
type Mode string

// The implementations.
const (
	// Kernel: the kernel's ipip link weft.ipip (the ipip module is there).
	Kernel Mode = "kernel"
	// Userspace: the TUN weft.ipip and a raw IPPROTO_IPIP socket.
	Userspace Mode = "userspace"
)

// Detection is what Detect found and why.
type Detection struct {
	Mode Mode
	// Reason says how it was decided, for the log and readiness details.
	Reason string
}

// Roots are where Detect looks; tests point them elsewhere.
type Roots struct {
	// Sys is /sys: Sys/module/ipip exists when the module is loaded or
	// built in.
	Sys string
	// Modules is /lib/modules/<release>: modules.dep lists ipip.ko when
	// the module can be loaded.
	Modules string
}

// HostRoots are this machine's.
func HostRoots() (Roots, error) {
	rel, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return Roots{}, fmt.Errorf("kernel release: %w", err)
	}
	return Roots{Sys: "/sys", Modules: filepath.Join("/lib/modules", strings.TrimSpace(string(rel)))}, nil
}

// Detect decides the implementation without side effects (it loads no
// module, creates no link): Kernel when the ipip module is loaded, built
// in, or listed in modules.dep (creating an ipip link would load it);
// Userspace otherwise.
func Detect(r Roots) Detection {
	if _, err := os.Stat(filepath.Join(r.Sys, "module", "ipip")); err == nil {
		return Detection{Kernel, "ipip module loaded or built in (" + filepath.Join(r.Sys, "module", "ipip") + ")"}
	}
	dep := filepath.Join(r.Modules, "modules.dep")
	if ok, err := listsIPIP(dep); err == nil && ok {
		return Detection{Kernel, "ipip module loadable (" + dep + ")"}
	} else if err != nil {
		return Detection{Userspace, "no ipip module loaded, " + dep + " unreadable: " + err.Error()}
	}
	return Detection{Userspace, "no ipip module loaded or loadable"}
}

// listsIPIP reports whether modules.dep lists the ipip module.
func listsIPIP(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		mod, _, _ := strings.Cut(s.Text(), ":")
		base := filepath.Base(mod)
		if base == "ipip.ko" || strings.HasPrefix(base, "ipip.ko.") {
			return true, nil
		}
	}
	return false, s.Err()
}

// userspaceAllowed refuses userspace IP-in-IP on a host whose kernel has
// ipip: the kernel would take every packet too (decapsulate it when tunl0
// is up, answer it with ICMP unreachable when not).
func userspaceAllowed() error {
	r, err := HostRoots()
	if err != nil {
		return err
	}
	if d := Detect(r); d.Mode == Kernel {
		return fmt.Errorf("ipip: userspace tunnel refused: %s; use the kernel ipip link", d.Reason)
	}
	return nil
}
