// Package deps checks hack/deps.sh, the host package installer, against
// stub commands (apt-get, systemctl, id): nothing is installed for real.
package deps

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

// stub writes an executable that appends its name and arguments to log.
func stub(t *testing.T, dir, name, log, extra string) {
	t.Helper()
	body := "#!/bin/sh\necho \"" + name + " $*\" >>" + log + "\n" + extra
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// Installing docker.io (hack/image.sh runs a private dockerd) leaves the
// system's docker.service and docker.socket disabled, stopped and masked
// when systemctl exists, so the system dockerd never starts and rewrites
// the host's iptables; and apt-get installs it with a policy-rc.d that
// forbids starting services.
func TestDepsDisablesSystemDocker(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "log")
	rcd := filepath.Join(dir, "policy-rc.d")
	// Every command of the script's first list is present (so only
	// docker.io is installed), read from the script so that a command
	// added there needs no change here.
	script, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "hack", "deps.sh"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^for pair in ([^;]+); do`).FindSubmatch(script)
	if m == nil {
		t.Fatal("hack/deps.sh: no `for pair in ...; do` list")
	}
	for _, pair := range append(strings.Fields(string(m[1])), "debootstrap:", "systemctl:") {
		c, _, _ := strings.Cut(pair, ":")
		stub(t, bin, c, log, "")
	}
	stub(t, bin, "id", log, "echo 0\n")
	stub(t, bin, "apt-get", log, "[ \"$1\" = update ] || [ -x "+rcd+" ] || echo 'apt-get without policy-rc.d' >>"+log+"\n")
	for _, c := range []string{"chmod", "rm"} { // the real ones, for policy-rc.d
		p, err := exec.LookPath(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(bin, c)); err != nil {
			t.Fatal(err)
		}
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bash, filepath.Join(testutil.RepoRoot(), "hack", "deps.sh"))
	cmd.Env = []string{"PATH=" + bin, "WEFT_POLICY_RC_D=" + rcd}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/deps.sh: %v\n%s", err, out)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	calls := strings.Split(strings.TrimSpace(string(b)), "\n")
	want := []string{"systemctl disable --now docker.service docker.socket", "systemctl mask docker.service docker.socket"}
	var got []string
	for _, c := range calls {
		if strings.HasPrefix(c, "systemctl ") {
			got = append(got, c)
		}
		if strings.Contains(c, "without policy-rc.d") {
			t.Errorf("apt-get ran without the policy-rc.d guard")
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("systemctl calls %q, want %q (all calls: %q)", got, want, calls)
	}
	if _, err := os.Stat(rcd); !os.IsNotExist(err) {
		t.Errorf("policy-rc.d left behind: %v", err)
	}
	if !strings.Contains(string(b), "apt-get install -y -qq --no-install-recommends docker.io") {
		t.Errorf("docker.io not installed: %q", calls)
	}
}
