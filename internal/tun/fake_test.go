package tun

import (
	"errors"
	"os"
	"testing"
)

func TestModeString(t *testing.T) {
	for _, c := range []struct {
		m    Mode
		want string
	}{
		{Mode{}, "none"},
		{Mode{VnetHdr: true, TSO: true, USO: true, GROWrite: true}, "tso+uso+gro"},
		{Mode{VnetHdr: true, TSO: true, Fallback: "GRO write failed: EINVAL"}, "tso (fallback: GRO write failed: EINVAL)"},
	} {
		if got := c.m.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.m, got, c.want)
		}
	}
}

func TestFakeBatchesAndCloses(t *testing.T) {
	f := NewFake("weft.udp", 1400, 2)
	for _, p := range []string{"a", "bb", "ccc"} {
		f.Inject([]byte(p))
	}
	bufs := [][]byte{make([]byte, BufSize), make([]byte, BufSize), make([]byte, BufSize)}
	sizes := make([]int, 3)
	n, err := f.Read(bufs, sizes)
	if err != nil || n != 2 || string(bufs[1][Offset:Offset+sizes[1]]) != "bb" {
		t.Fatalf("read %d %v, want 2 packets (batch size)", n, err)
	}
	if _, err := f.Write(packetBufs([]byte("x"), []byte("yz"))); err != nil {
		t.Fatal(err)
	}
	if w := f.Written(); len(w) != 2 || string(w[1]) != "yz" {
		t.Fatalf("written %q", w)
	}
	_ = f.Close()
	n, err = f.Read(bufs, sizes)
	if n != 1 || err != nil { // the queued packet still comes out
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("read after close: %d %v", n, err)
		}
	}
	if _, err := f.Write(packetBufs([]byte("x"))); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}
