package ipam

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

func TestAddResultShape(t *testing.T) {
	p, _ := newFake()
	conf := netConfig(t, "1.1.0", `{"ranges":[[{"subnet":"10.1.0.0/24","gateway":"10.1.0.254"}],[{"subnet":"fd01::/64"}]],
		"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0","gw":"fd01::1"}]}`, nil)
	r := mustAdd(t, p, cmdArgs("c1", "eth0", conf))
	if got := ips(r); !slices.Equal(got, []string{"10.1.0.1/24", "fd01::2/64"}) {
		t.Fatalf("ips %v", got)
	}
	if r.IPs[0].Gateway.String() != "10.1.0.254" || r.IPs[1].Gateway.String() != "fd01::1" {
		t.Errorf("gateways %v %v", r.IPs[0].Gateway, r.IPs[1].Gateway)
	}
	for _, ip := range r.IPs {
		if ip.Interface != nil {
			t.Errorf("interface index set: %d", *ip.Interface)
		}
	}
	if len(r.Routes) != 2 || r.Routes[1].GW.String() != "fd01::1" || len(r.Interfaces) != 0 {
		t.Errorf("routes %v interfaces %v", r.Routes, r.Interfaces)
	}
	// The result converts to every supported version.
	for _, v := range SupportedVersions() {
		if _, err := r.GetAsVersion(v); err != nil {
			t.Errorf("GetAsVersion(%s): %v", v, err)
		}
	}
}

func TestAddIdempotentPerAttachment(t *testing.T) {
	p, o := newFake()
	conf := netConfig(t, "1.0.0", `{"subnet":"10.2.0.0/24"}`, nil)
	a := mustAdd(t, p, cmdArgs("c1", "eth0", conf))
	b := mustAdd(t, p, cmdArgs("c1", "eth0", conf))
	if ips(a)[0] != ips(b)[0] {
		t.Errorf("repeated ADD gave %v then %v", ips(a), ips(b))
	}
	c := mustAdd(t, p, cmdArgs("c1", "net1", conf))
	if ips(c)[0] == ips(a)[0] {
		t.Errorf("second interface got the same address %v", ips(c))
	}
	st := o.Get(dataDirOf(t, conf)).Snapshot()
	if len(st.Allocations) != 2 {
		t.Errorf("allocations %+v", st.Allocations)
	}
	// A repeated ADD asking for a different address is refused.
	x := cmdArgs("c1", "eth0", conf)
	x.Args = "IP=10.2.0.100"
	_, err := p.Add(context.Background(), x)
	wantCode(t, err, types.ErrInternal, "already holds")
}

func TestAddRequestedIPs(t *testing.T) {
	p, _ := newFake()
	conf := netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.3.0.0/24"}],[{"subnet":"fd03::/64"}]]}`, nil)
	a := cmdArgs("c1", "eth0", conf)
	// Kubernetes-style args; unknown keys must never be rejected, with or
	// without IgnoreUnknown.
	a.Args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u;IP=10.3.0.50,fd03::50"
	r := mustAdd(t, p, a)
	if got := ips(r); !slices.Equal(got, []string{"10.3.0.50/24", "fd03::50/64"}) {
		t.Fatalf("ips %v", got)
	}
	b := cmdArgs("c2", "eth0", conf)
	b.Args = "K8S_POD_NAME=web-1;IP=10.3.0.50"
	_, err := p.Add(context.Background(), b)
	wantCode(t, err, types.ErrInternal, "already allocated")

	conf2 := netConfig(t, "1.0.0", `{"subnet":"10.4.0.0/24"}`, map[string]any{"runtimeConfig": map[string]any{"ips": []string{"10.4.0.9/24"}}})
	if got := ips(mustAdd(t, p, cmdArgs("c3", "eth0", conf2))); got[0] != "10.4.0.9/24" {
		t.Errorf("runtimeConfig ips: %v", got)
	}
	conf3 := netConfig(t, "1.0.0", `{"subnet":"10.5.0.0/24"}`, map[string]any{"args": map[string]any{"cni": map[string]any{"ips": []string{"10.5.0.33"}}}})
	if got := ips(mustAdd(t, p, cmdArgs("c4", "eth0", conf3))); got[0] != "10.5.0.33/24" {
		t.Errorf("args.cni.ips: %v", got)
	}
	// A requested address does not move the next-free cursor.
	conf4 := netConfig(t, "1.0.0", `{"subnet":"10.6.0.0/24"}`, nil)
	c := cmdArgs("r", "eth0", conf4)
	c.Args = "IP=10.6.0.200"
	mustAdd(t, p, c)
	if got := ips(mustAdd(t, p, cmdArgs("n", "eth0", conf4))); got[0] != "10.6.0.2/24" {
		t.Errorf("next after requested: %v", got)
	}
}

func TestExhaustionAndStatus(t *testing.T) {
	p, _ := newFake()
	conf := netConfig(t, "1.1.0", `{"ranges":[[{"subnet":"10.7.0.0/29","rangeStart":"10.7.0.2","rangeEnd":"10.7.0.4"}]]}`, nil)
	ctx := context.Background()
	if err := p.Status(ctx, cmdArgs("", "", conf)); err != nil {
		t.Fatalf("STATUS on empty pool: %v", err)
	}
	var got []string
	for i := range 3 {
		got = append(got, ips(mustAdd(t, p, cmdArgs(fmt.Sprint("c", i), "eth0", conf)))...)
	}
	if !slices.Equal(got, []string{"10.7.0.2/29", "10.7.0.3/29", "10.7.0.4/29"}) {
		t.Fatalf("got %v", got)
	}
	_, err := p.Add(ctx, cmdArgs("c9", "eth0", conf))
	wantCode(t, err, types.ErrTryAgainLater, "no free address")
	err = p.Status(ctx, cmdArgs("", "", conf))
	wantCode(t, err, types.ErrPluginNotAvailable, "ipam.ranges[0]")
	if err := p.Del(ctx, cmdArgs("c1", "eth0", conf)); err != nil {
		t.Fatal(err)
	}
	if err := p.Status(ctx, cmdArgs("", "", conf)); err != nil {
		t.Fatalf("STATUS after a release: %v", err)
	}
	// The freed address is found by wrapping around.
	if got := ips(mustAdd(t, p, cmdArgs("c9", "eth0", conf))); got[0] != "10.7.0.3/29" {
		t.Errorf("after wrap: %v", got)
	}
}

func TestSubnetFileMode(t *testing.T) {
	path := writeSubnetFile(t, "10.244.3.0/24")
	p, _ := newFake()
	ctx := context.Background()
	conf := netConfig(t, "1.1.0", `{"type":"weft-ipam","subnetFile":"`+path+`"}`, nil)
	r := mustAdd(t, p, cmdArgs("c1", "eth0", conf))
	if got := ips(r); got[0] != "10.244.3.2/24" || r.IPs[0].Gateway.String() != "10.244.3.1" {
		t.Fatalf("ips %v gw %v", got, r.IPs[0].Gateway)
	}
	if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" || r.Routes[0].GW.String() != "10.244.3.1" {
		t.Errorf("default route missing: %v", r.Routes)
	}
	if err := p.Status(ctx, cmdArgs("", "", conf)); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	// "routes": [] means none; explicit routes replace the default.
	noRoutes := netConfig(t, "1.1.0", `{"subnetFile":"`+path+`","routes":[]}`, nil)
	if r := mustAdd(t, p, cmdArgs("c1", "eth0", noRoutes)); len(r.Routes) != 0 {
		t.Errorf("routes [] gave %v", r.Routes)
	}
	own := netConfig(t, "1.1.0", `{"subnetFile":"`+path+`","routes":[{"dst":"10.244.0.0/16"}]}`, nil)
	if r := mustAdd(t, p, cmdArgs("c1", "eth0", own)); len(r.Routes) != 1 || r.Routes[0].Dst.String() != "10.244.0.0/16" {
		t.Errorf("explicit routes gave %v", r.Routes)
	}
	// Extra ranges follow the node subnet (e.g. IPv6), overlap is refused.
	dual := netConfig(t, "1.1.0", `{"subnetFile":"`+path+`","ranges":[[{"subnet":"fd44::/64"}]]}`, nil)
	if got := ips(mustAdd(t, p, cmdArgs("c2", "eth0", dual))); len(got) != 2 || got[1] != "fd44::2/64" {
		t.Errorf("dual %v", got)
	}
	clash := netConfig(t, "1.1.0", `{"subnetFile":"`+path+`","ranges":[[{"subnet":"10.244.3.128/25"}]]}`, nil)
	_, err := p.Add(ctx, cmdArgs("c3", "eth0", clash))
	wantCode(t, err, types.ErrInvalidNetworkConfig, "ipam.subnetFile")

	// weftd gone: ADD waits (code 11), STATUS says not available (50),
	// DEL still works.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err = p.Add(ctx, cmdArgs("c4", "eth0", conf))
	wantCode(t, err, types.ErrTryAgainLater, "ipam.subnetFile")
	wantCode(t, p.Status(ctx, cmdArgs("", "", conf)), types.ErrPluginNotAvailable, "ipam.subnetFile")
	if err := p.Del(ctx, cmdArgs("c1", "eth0", conf)); err != nil {
		t.Fatalf("DEL without subnet file: %v", err)
	}
}

func TestDelIdempotent(t *testing.T) {
	p, o := newFake()
	ctx := context.Background()
	conf := netConfig(t, "1.0.0", `{"subnet":"10.8.0.0/24"}`, nil)
	if err := p.Del(ctx, cmdArgs("never", "eth0", conf)); err != nil {
		t.Fatalf("DEL of unknown container: %v", err)
	}
	mustAdd(t, p, cmdArgs("c1", "eth0", conf))
	mustAdd(t, p, cmdArgs("c1", "net1", conf))
	mustAdd(t, p, cmdArgs("c2", "eth0", conf))
	for range 2 {
		if err := p.Del(ctx, cmdArgs("c1", "eth0", conf)); err != nil {
			t.Fatal(err)
		}
	}
	st := o.Get(dataDirOf(t, conf)).Snapshot()
	if len(st.Allocations) != 2 || len(st.Find("c1", "eth0")) != 0 || len(st.Find("c1", "net1")) != 1 {
		t.Errorf("after DEL: %+v", st.Allocations)
	}
	// DEL with garbage JSON is still a decode error, not a silent success.
	wantCode(t, p.Del(ctx, cmdArgs("c1", "eth0", []byte("{"))), types.ErrDecodingFailure, "decode")
}

func prevResult(t *testing.T, r *types100.Result, version string) map[string]any {
	t.Helper()
	conv, err := r.GetAsVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(conv)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCheck(t *testing.T) {
	p, _ := newFake()
	ctx := context.Background()
	ipamConf := `{"ranges":[[{"subnet":"10.9.0.0/24"}],[{"subnet":"fd09::/64"}]]}`
	conf := netConfig(t, "1.0.0", ipamConf, nil)
	r := mustAdd(t, p, cmdArgs("c1", "eth0", conf))
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		withPrev := netConfig(t, v, ipamConf, map[string]any{"name": "x", "prevResult": prevResult(t, r, v)})
		withPrev = rename(t, withPrev, conf)
		if err := p.Check(ctx, cmdArgs("c1", "eth0", withPrev)); err != nil {
			t.Errorf("CHECK %s: %v", v, err)
		}
	}
	// No allocation for this attachment.
	wantCode(t, p.Check(ctx, cmdArgs("c1", "eth1", conf)), types.ErrUnknownContainer, "no address")
	// prevResult that lacks the allocated v6 address.
	r.IPs = r.IPs[:1]
	bad := rename(t, netConfig(t, "1.0.0", ipamConf, map[string]any{"prevResult": prevResult(t, r, "1.0.0")}), conf)
	wantCode(t, p.Check(ctx, cmdArgs("c1", "eth0", bad)), types.ErrUnknownContainer, "fd09::2")
	// After DEL, CHECK fails.
	if err := p.Del(ctx, cmdArgs("c1", "eth0", conf)); err != nil {
		t.Fatal(err)
	}
	wantCode(t, p.Check(ctx, cmdArgs("c1", "eth0", conf)), types.ErrUnknownContainer, "c1")
}

// rename gives conf the network name of like, so both use one store.
func rename(t *testing.T, conf, like []byte) []byte {
	t.Helper()
	var a, b map[string]any
	if err := json.Unmarshal(conf, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(like, &b); err != nil {
		t.Fatal(err)
	}
	a["name"] = b["name"]
	out, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestGC(t *testing.T) {
	ctx := context.Background()
	ipamConf := `{"subnet":"10.10.0.0/24"}`
	setup := func(t *testing.T) (*Plugin, func(map[string]any) []byte, func() []string) {
		p, o := newFake()
		base := netConfig(t, "1.1.0", ipamConf, nil)
		for _, id := range []string{"a", "b", "c"} {
			mustAdd(t, p, cmdArgs(id, "eth0", base))
		}
		mustAdd(t, p, cmdArgs("a", "net1", base))
		gcConf := func(extra map[string]any) []byte { return rename(t, netConfig(t, "1.1.0", ipamConf, extra), base) }
		left := func() []string {
			var out []string
			for _, a := range o.Get(dataDirOf(t, base)).Snapshot().Allocations {
				out = append(out, a.ContainerID+"/"+a.IfName)
			}
			slices.Sort(out)
			return out
		}
		return p, gcConf, left
	}
	valid := []map[string]string{{"containerID": "a", "ifname": "eth0"}}

	t.Run("valid-attachments", func(t *testing.T) {
		p, gcConf, left := setup(t)
		if err := p.GC(ctx, cmdArgs("", "", gcConf(map[string]any{"cni.dev/valid-attachments": valid}))); err != nil {
			t.Fatal(err)
		}
		if got := left(); !slices.Equal(got, []string{"a/eth0"}) {
			t.Errorf("left %v", got)
		}
	})
	t.Run("older attachments key", func(t *testing.T) {
		p, gcConf, left := setup(t)
		if err := p.GC(ctx, cmdArgs("", "", gcConf(map[string]any{"cni.dev/attachments": valid}))); err != nil {
			t.Fatal(err)
		}
		if got := left(); !slices.Equal(got, []string{"a/eth0"}) {
			t.Errorf("left %v", got)
		}
	})
	t.Run("null list releases everything", func(t *testing.T) {
		p, gcConf, left := setup(t)
		if err := p.GC(ctx, cmdArgs("", "", gcConf(map[string]any{"cni.dev/valid-attachments": nil}))); err != nil {
			t.Fatal(err)
		}
		if got := left(); len(got) != 0 {
			t.Errorf("left %v", got)
		}
	})
	t.Run("no list releases nothing", func(t *testing.T) {
		p, gcConf, left := setup(t)
		if err := p.GC(ctx, cmdArgs("", "", gcConf(nil))); err != nil {
			t.Fatal(err)
		}
		if got := left(); len(got) != 4 {
			t.Errorf("left %v", got)
		}
	})
	t.Run("malformed list", func(t *testing.T) {
		p, gcConf, left := setup(t)
		err := p.GC(ctx, cmdArgs("", "", gcConf(map[string]any{"cni.dev/valid-attachments": "nope"})))
		wantCode(t, err, types.ErrDecodingFailure, "cni.dev/valid-attachments")
		if got := left(); len(got) != 4 {
			t.Errorf("left %v", got)
		}
	})
}

func TestAddAllOrNothingAcrossSets(t *testing.T) {
	p, o := newFake()
	ctx := context.Background()
	// The v6 set has a single allocatable address.
	conf := netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.11.0.0/24"}],[{"subnet":"fd11::/64","rangeStart":"fd11::5","rangeEnd":"fd11::5"}]]}`, nil)
	mustAdd(t, p, cmdArgs("first", "eth0", conf))
	_, err := p.Add(ctx, cmdArgs("second", "eth0", conf))
	wantCode(t, err, types.ErrTryAgainLater, "ipam.ranges[1]")
	st := o.Get(dataDirOf(t, conf)).Snapshot()
	if len(st.Allocations) != 2 || len(st.Find("second", "eth0")) != 0 {
		t.Fatalf("failed ADD left a partial allocation: %+v", st.Allocations)
	}
	if st.Last(0).String() != "10.11.0.2" {
		t.Errorf("failed ADD moved the cursor: %v", st.LastReserved)
	}
}
