package cniargs

import (
	"slices"
	"testing"
)

func TestValues(t *testing.T) {
	args := "IgnoreUnknown=1;K8S_POD_NAMESPACE=default; K8S_POD_NAME =web-1;garbage;IP=10.0.0.5;IP=10.0.0.6,10.0.0.7"
	if got := Values(args, "IP"); !slices.Equal(got, []string{"10.0.0.5", "10.0.0.6,10.0.0.7"}) {
		t.Errorf("IP values %q", got)
	}
	if got := Last(args, "K8S_POD_NAME"); got != "web-1" {
		t.Errorf("K8S_POD_NAME %q", got)
	}
	if got := Last(args, "K8S_POD_UID"); got != "" {
		t.Errorf("absent key gave %q", got)
	}
	if got := Last("K8S_POD_NAME=a;K8S_POD_NAME=b", "K8S_POD_NAME"); got != "b" {
		t.Errorf("last of repeated key %q", got)
	}
	if got := Values("", "IP"); got != nil {
		t.Errorf("empty args gave %q", got)
	}
}
