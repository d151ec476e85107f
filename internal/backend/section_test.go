package backend

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecodeSection(t *testing.T) {
	type wire struct {
		Type string `json:"type"`
		Port int    `json:"port"`
	}
	for _, c := range []struct {
		raw, err string
		port     int
	}{
		{"", "", 7}, {`{}`, "", 7}, {`{"type":"x"}`, "", 7}, {`{"port":9}`, "", 9},
		{`{"type":"y"}`, `type "y" is not "x"`, 0}, {`{"prot":9}`, `unknown field "prot"`, 0},
		{`{"port":"9"}`, "decode:", 0},
	} {
		w := wire{Port: 7}
		err := DecodeSection(json.RawMessage(c.raw), "x", &w, &w.Type)
		switch {
		case c.err == "" && (err != nil || w.Port != c.port):
			t.Errorf("%s: %v, port %d, want %d", c.raw, err, w.Port, c.port)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: %v, want an error with %q", c.raw, err, c.err)
		}
	}
}

type guardFunc func(ctx context.Context, kind string) error

func (g guardFunc) Remove(ctx context.Context, kind string) error { return g(ctx, kind) }

func TestTeardown(t *testing.T) {
	var removed []string
	dev := func() error { removed = append(removed, "dev"); return errors.New("busy") }
	guard := guardFunc(func(_ context.Context, kind string) error { removed = append(removed, "guard "+kind); return nil })
	err := Teardown(context.Background(), "udp", dev, guard)
	if err == nil || err.Error() != "udp: busy" || strings.Join(removed, ",") != "dev,guard udp" {
		t.Fatalf("err %v, removed %v", err, removed)
	}
	if err := Teardown(context.Background(), "udp", nil, nil); err != nil {
		t.Fatal(err)
	}
}
