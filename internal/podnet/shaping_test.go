package podnet

import (
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/endpoint/record"
)

// The record carries the annotations' own values (weftd's errors quote
// them), the capability's rates only when no annotation came, the
// capability's bursts, and nothing when weftd does not shape.
func TestBandwidthRequest(t *testing.T) {
	base := `{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"type":"weft-ipam"},"endpointDir":"/e"`
	for _, tc := range []struct {
		conf string
		want *record.Bandwidth
	}{
		{base + `,"shapingSocket":"/s","runtimeConfig":{"bandwidth":{"ingressRate":10000000,"ingressBurst":4294967295,"egressRate":5000000,"egressBurst":4294967295},` +
			`"io.kubernetes.cri.pod-annotations":{"kubernetes.io/ingress-bandwidth":"10M","other":"x"}}}`,
			&record.Bandwidth{Ingress: "10M", Egress: "5000000", IngressBurst: 4294967295, EgressBurst: 4294967295}},
		{base + `,"shapingSocket":"/s","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"kubernetes.io/egress-bandwidth":"ten"}}}`,
			&record.Bandwidth{Egress: "ten"}},
		{base + `,"shapingSocket":"/s","runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"a":"b"}}}`, nil},
		{base + `,"runtimeConfig":{"bandwidth":{"ingressRate":10000000}}}`, nil},
	} {
		c, err := LoadConf([]byte(tc.conf))
		if err != nil {
			t.Fatal(err)
		}
		got := c.bandwidthRequest()
		if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.conf, got, tc.want)
		}
	}
	if _, err := LoadConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"type":"weft-ipam"},"shapingSocket":"/s"}`)); err == nil || !strings.Contains(err.Error(), "shapingSocket") {
		t.Fatalf("shapingSocket without endpointDir: %v", err)
	}
}
