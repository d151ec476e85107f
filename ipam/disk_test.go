package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/ipam/store"
	"github.com/weftnet/weft/ipam/store/disk"
)

// diskConfig returns a configuration whose state lives under a test
// directory, and the network's own state directory.
func diskConfig(t testing.TB, version, ranges string) ([]byte, string) {
	t.Helper()
	parent := t.TempDir()
	conf := netConfig(t, version, `{"type":"weft-ipam","dataDir":"`+parent+`",`+ranges+`}`, nil)
	return conf, dataDirOf(t, conf)
}

func diskState(t testing.TB, dir string) *store.State {
	t.Helper()
	var out *store.State
	if err := disk.New(dir, disk.Options{}).View(context.Background(), func(s *store.State) error {
		out = s
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func onlyStateFile(t testing.TB, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	for _, n := range names {
		if n != disk.Slot0 && n != disk.Slot1 {
			t.Errorf("data dir holds %v, want only the state slots %v: no lock or temp files may be left", names, disk.SlotFiles())
			return
		}
	}
	if len(names) == 0 {
		t.Errorf("data dir %s is empty", dir)
	}
}

func TestDiskConcurrentAddDel(t *testing.T) {
	conf, dir := diskConfig(t, "1.1.0", `"subnet":"10.20.0.0/24"`)
	const n = 100
	results := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := CmdAdd(cmdArgs(fmt.Sprintf("pod-%03d", i), "eth0", conf))
			errs[i] = err
			if err == nil {
				results[i] = r.IPs[0].Address.IP.String()
			}
		})
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		if j, dup := seen[results[i]]; dup {
			t.Fatalf("pods %d and %d both got %s", i, j, results[i])
		}
		seen[results[i]] = i
		a := netip.MustParseAddr(results[i])
		if a.String() == "10.20.0.0" || a.String() == "10.20.0.1" || a.String() == "10.20.0.255" {
			t.Fatalf("reserved address %s handed out", a)
		}
	}
	if st := diskState(t, dir); len(st.Allocations) != n {
		t.Fatalf("store holds %d allocations, want %d", len(st.Allocations), n)
	}
	onlyStateFile(t, dir)

	for i := range n {
		wg.Go(func() { errs[i] = CmdDel(cmdArgs(fmt.Sprintf("pod-%03d", i), "eth0", conf)) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("DEL %d: %v", i, errs[i])
		}
	}
	if st := diskState(t, dir); len(st.Allocations) != 0 {
		t.Fatalf("after DEL: %+v", st.Allocations)
	}
	onlyStateFile(t, dir)
}

func TestDiskRestartSurvival(t *testing.T) {
	conf, dir := diskConfig(t, "1.0.0", `"ranges":[[{"subnet":"10.21.0.0/24","rangeEnd":"10.21.0.6"}]]`)
	ctx := context.Background()
	first := New(disk.Opener{})
	a := mustAdd(t, first, cmdArgs("a", "eth0", conf))
	b := mustAdd(t, first, cmdArgs("b", "eth0", conf))
	if err := first.Del(ctx, cmdArgs("a", "eth0", conf)); err != nil {
		t.Fatal(err)
	}
	// A new process: nothing in memory, only the disk.
	second := New(disk.Opener{})
	if got := mustAdd(t, second, cmdArgs("b", "eth0", conf)); ips(got)[0] != ips(b)[0] {
		t.Errorf("after restart b got %v, had %v", ips(got), ips(b))
	}
	// Next-free continues after the last reserved address instead of
	// reusing a's released address at once.
	c := mustAdd(t, second, cmdArgs("c", "eth0", conf))
	if ips(a)[0] != "10.21.0.2/24" || ips(b)[0] != "10.21.0.3/24" || ips(c)[0] != "10.21.0.4/24" {
		t.Errorf("a %v b %v c %v", ips(a), ips(b), ips(c))
	}
	mustAdd(t, second, cmdArgs("d", "eth0", conf)) // .5
	mustAdd(t, second, cmdArgs("e", "eth0", conf)) // .6
	if got := mustAdd(t, second, cmdArgs("f", "eth0", conf)); ips(got)[0] != "10.21.0.2/24" {
		t.Errorf("wrap-around after restart gave %v", ips(got))
	}
	if err := second.Check(ctx, cmdArgs("c", "eth0", conf)); err != nil {
		t.Errorf("CHECK after restart: %v", err)
	}
	onlyStateFile(t, dir)
}

// TestDiskCrashLeavesCleanableState models an ADD killed after the store
// was written (the weft plugin died before returning): the runtime's DEL or
// a GC must release it.
func TestDiskCrashLeavesCleanableState(t *testing.T) {
	conf, dir := diskConfig(t, "1.1.0", `"subnet":"10.22.0.0/24"`)
	if _, err := CmdAdd(cmdArgs("live", "eth0", conf)); err != nil {
		t.Fatal(err)
	}
	if _, err := CmdAdd(cmdArgs("crashed", "eth0", conf)); err != nil {
		t.Fatal(err)
	}
	// A writer killed while overwriting the next slot: a torn copy of a
	// state that also holds a third allocation.
	tearNextSlot(t, dir, "10.22.0.99 ghost eth0")
	if st := diskState(t, dir); len(st.Allocations) != 2 || len(st.Find("ghost", "eth0")) != 0 {
		t.Fatalf("torn slot was believed: %+v", st.Allocations)
	}
	gc := rename(t, netConfig(t, "1.1.0", `{"subnet":"10.22.0.0/24","dataDir":"`+filepath.Dir(dir)+`"}`,
		map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "live", "ifname": "eth0"}}}), conf)
	if err := CmdGC(cmdArgs("", "", gc)); err != nil {
		t.Fatal(err)
	}
	st := diskState(t, dir)
	if len(st.Allocations) != 1 || st.Allocations[0].ContainerID != "live" {
		t.Fatalf("after GC: %+v", st.Allocations)
	}
	onlyStateFile(t, dir)
	if err := CmdStatus(cmdArgs("", "", conf)); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	if err := CmdCheck(cmdArgs("crashed", "eth0", conf)); err == nil {
		t.Error("CHECK passes for a released attachment")
	}
}

// tearNextSlot writes into the slot the next writer would use what a writer
// killed midway leaves: the next generation's header over a state with an
// extra line and no valid trailer.
func tearNextSlot(t testing.TB, dir, extra string) {
	t.Helper()
	var gens [2]uint64
	var datas [2][]byte
	for i, name := range disk.SlotFiles() {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		datas[i] = data
		first, _, _ := strings.Cut(string(data), "\n")
		fmt.Sscanf(first, "weft-ipam 1 %d", &gens[i])
	}
	cur := 0
	if gens[1] > gens[0] {
		cur = 1
	}
	body := strings.Replace(string(datas[cur]), fmt.Sprintf("weft-ipam 1 %d", gens[cur]), fmt.Sprintf("weft-ipam 1 %d", gens[cur]+1), 1)
	if err := os.WriteFile(filepath.Join(dir, disk.SlotFiles()[1-cur]), []byte(body+extra+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// runPlugin execs the weft-ipam binary like a runtime does.
func runPlugin(t testing.TB, bin, command, id, ifname, cniArgs string, stdin []byte) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + id,
		"CNI_NETNS=/var/run/netns/weft-ipam-test-absent",
		"CNI_IFNAME=" + ifname,
		"CNI_PATH=" + filepath.Dir(bin),
		"CNI_ARGS=" + cniArgs,
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w (stdout %s, stderr %s)", command, id, err, out, stderr.String())
	}
	return out, nil
}

func TestBinaryVerbs(t *testing.T) {
	bin := filepath.Join(testutil.BinDir(t), "weft-ipam")
	out, err := runPlugin(t, bin, "VERSION", "", "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil || !slices.Equal(v.Supported, SupportedVersions()) {
		t.Fatalf("VERSION: %s (%v)", out, err)
	}
	for _, ver := range []string{"0.3.1", "1.0.0", "1.1.0"} {
		t.Run(ver, func(t *testing.T) {
			conf, dir := diskConfig(t, ver, `"subnet":"10.23.0.0/24"`)
			out, err := runPlugin(t, bin, "ADD", "ctr1", "eth0", "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.23.0.77", conf)
			if err != nil {
				t.Fatal(err)
			}
			var res struct {
				CNIVersion string `json:"cniVersion"`
				IPs        []struct {
					Version string `json:"version"`
					Address string `json:"address"`
					Gateway string `json:"gateway"`
				} `json:"ips"`
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("result %s: %v", out, err)
			}
			if res.CNIVersion != ver || len(res.IPs) != 1 || res.IPs[0].Address != "10.23.0.77/24" || res.IPs[0].Gateway != "10.23.0.1" {
				t.Fatalf("result %s", out)
			}
			if (ver == "0.3.1") != (res.IPs[0].Version == "4") {
				t.Errorf("version field for %s: %s", ver, out)
			}
			if ver != "0.3.1" {
				withPrev := rename(t, netConfig(t, ver, `{"subnet":"10.23.0.0/24","dataDir":"`+filepath.Dir(dir)+`"}`,
					map[string]any{"prevResult": json.RawMessage(out)}), conf)
				if _, err := runPlugin(t, bin, "CHECK", "ctr1", "eth0", "", withPrev); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			for range 2 {
				if _, err := runPlugin(t, bin, "DEL", "ctr1", "eth0", "", conf); err != nil {
					t.Fatal(err)
				}
			}
			if st := diskState(t, dir); len(st.Allocations) != 0 {
				t.Errorf("after DEL: %+v", st.Allocations)
			}
			onlyStateFile(t, dir)
		})
	}
	t.Run("status and gc", func(t *testing.T) {
		conf, dir := diskConfig(t, "1.1.0", `"subnet":"10.24.0.0/30"`)
		if _, err := runPlugin(t, bin, "STATUS", "", "", "", conf); err != nil {
			t.Fatalf("STATUS: %v", err)
		}
		if _, err := runPlugin(t, bin, "ADD", "x", "eth0", "", conf); err != nil {
			t.Fatal(err)
		}
		out, err := runPlugin(t, bin, "STATUS", "", "", "", conf)
		wantPrintedCode(t, out, err, types.ErrPluginNotAvailable)
		gc := rename(t, netConfig(t, "1.1.0", `{"subnet":"10.24.0.0/30","dataDir":"`+filepath.Dir(dir)+`"}`,
			map[string]any{"cni.dev/valid-attachments": []any{}}), conf)
		if _, err := runPlugin(t, bin, "GC", "", "", "", gc); err != nil {
			t.Fatalf("GC: %v", err)
		}
		if _, err := runPlugin(t, bin, "STATUS", "", "", "", conf); err != nil {
			t.Fatalf("STATUS after GC: %v", err)
		}
	})
	t.Run("errors", func(t *testing.T) {
		out, err := runPlugin(t, bin, "ADD", "x", "eth0", "", []byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.128/25"}]]}}`))
		wantPrintedCode(t, out, err, types.ErrInvalidNetworkConfig)
		if !strings.Contains(string(out), "ipam.ranges[0][1]") {
			t.Errorf("error does not name the field: %s", out)
		}
		out, err = runPlugin(t, bin, "ADD", "x", "eth0", "", []byte(`{"cniVersion":"1.0.0",`))
		wantPrintedCode(t, out, err, types.ErrDecodingFailure)
		out, err = runPlugin(t, bin, "ADD", "x", "eth0", "", []byte(`{"cniVersion":"7.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24"}}`))
		wantPrintedCode(t, out, err, types.ErrIncompatibleCNIVersion)
	})
}

func wantPrintedCode(t testing.TB, out []byte, err error, code uint) {
	t.Helper()
	if err == nil {
		t.Fatalf("want failure with code %d, got success: %s", code, out)
	}
	var e types.Error
	if jerr := json.Unmarshal(out, &e); jerr != nil || e.Code != code {
		t.Fatalf("want code %d, got %s (%v)", code, out, err)
	}
}

// TestDiskManyProcesses runs exec'd plugins and in-process ADDs against one
// data directory at the same time: only the flock keeps them apart.
func TestDiskManyProcesses(t *testing.T) {
	bin := filepath.Join(testutil.BinDir(t), "weft-ipam")
	conf, dir := diskConfig(t, "1.0.0", `"subnet":"10.25.0.0/24"`)
	const procs, inproc = 24, 24
	got := make([]string, procs+inproc)
	errs := make([]error, procs+inproc)
	var wg sync.WaitGroup
	for i := range procs + inproc {
		wg.Go(func() {
			id := fmt.Sprintf("m-%02d", i)
			if i < procs {
				out, err := runPlugin(t, bin, "ADD", id, "eth0", "", conf)
				if err != nil {
					errs[i] = err
					return
				}
				r, err := types100.NewResult(out)
				if err != nil {
					errs[i] = err
					return
				}
				res, _ := r.(*types100.Result)
				got[i] = res.IPs[0].Address.String()
				return
			}
			r, err := CmdAdd(cmdArgs(id, "eth0", conf))
			if err != nil {
				errs[i] = err
				return
			}
			got[i] = r.IPs[0].Address.String()
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, ip := range got {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		if seen[ip] {
			t.Fatalf("%s handed out twice", ip)
		}
		seen[ip] = true
	}
	if st := diskState(t, dir); len(st.Allocations) != procs+inproc {
		t.Fatalf("store holds %d allocations", len(st.Allocations))
	}
	for i := range procs + inproc {
		wg.Go(func() {
			id := fmt.Sprintf("m-%02d", i)
			if i%2 == 0 {
				_, errs[i] = runPlugin(t, bin, "DEL", id, "eth0", "", conf)
			} else {
				errs[i] = CmdDel(cmdArgs(id, "eth0", conf))
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	if st := diskState(t, dir); len(st.Allocations) != 0 {
		t.Fatalf("after DEL: %+v", st.Allocations)
	}
	onlyStateFile(t, dir)
}

// TestDiskKilledWriters SIGKILLs exec'd ADDs at random moments (before,
// during and after their write) while others run, then checks the store is
// readable, holds no duplicates, still allocates, and that GC with an empty
// list leaves nothing behind.
func TestDiskKilledWriters(t *testing.T) {
	bin := filepath.Join(testutil.BinDir(t), "weft-ipam")
	conf, dir := diskConfig(t, "1.1.0", `"subnet":"10.26.0.0/24"`)
	const n = 60
	var wg sync.WaitGroup
	for i := range n {
		cmd := exec.Command(bin)
		cmd.Env = []string{"CNI_COMMAND=ADD", fmt.Sprintf("CNI_CONTAINERID=k-%d", i), "CNI_NETNS=/var/run/netns/weft-ipam-test-absent",
			"CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(bin)}
		cmd.Stdin = bytes.NewReader(conf)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		delay := time.Duration(rand.IntN(4000)) * time.Microsecond
		wg.Go(func() {
			time.Sleep(delay)
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		if i%3 == 0 {
			// Let some overlap, serialise others.
			wg.Wait()
		}
	}
	wg.Wait()
	st := diskState(t, dir)
	seen := map[netip.Addr]bool{}
	for _, a := range st.Allocations {
		if seen[a.IP] {
			t.Fatalf("%s recorded twice: %+v", a.IP, st.Allocations)
		}
		seen[a.IP] = true
	}
	t.Logf("%d of %d killed ADDs had recorded their allocation", len(st.Allocations), n)
	if _, err := CmdAdd(cmdArgs("after", "eth0", conf)); err != nil {
		t.Fatalf("ADD after the kills: %v", err)
	}
	gc := rename(t, netConfig(t, "1.1.0", `{"subnet":"10.26.0.0/24","dataDir":"`+filepath.Dir(dir)+`"}`,
		map[string]any{"cni.dev/valid-attachments": []any{}}), conf)
	if err := CmdGC(cmdArgs("", "", gc)); err != nil {
		t.Fatal(err)
	}
	if st := diskState(t, dir); len(st.Allocations) != 0 {
		t.Fatalf("after GC: %+v", st.Allocations)
	}
	onlyStateFile(t, dir)
}
