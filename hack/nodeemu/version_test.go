package nodeemu

import (
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// Like containerd 1.6, the emulator (by default) fails a pod whose chain
// returned a result newer than 1.0.0, so the local cluster proves weft's
// conflist works on the strictest runtime in use.
func TestAcceptVersion(t *testing.T) {
	strict := &sandboxes{opts: CNIOptions{MaxResultVersion: "1.0.0"}}
	for v, ok := range map[string]bool{"0.3.1": true, "0.4.0": true, "1.0.0": true, "1.1.0": false} {
		err := strict.acceptVersion(&current.Result{CNIVersion: v})
		if ok != (err == nil) {
			t.Errorf("result %s with max 1.0.0: %v", v, err)
		}
		if err != nil && !strings.Contains(err.Error(), "incompatible CNI result version 1.1.0") {
			t.Errorf("error %q does not name the version", err)
		}
	}
	lax := &sandboxes{}
	if err := lax.acceptVersion(&current.Result{CNIVersion: "1.1.0"}); err != nil {
		t.Errorf("no maximum: %v", err)
	}
}
