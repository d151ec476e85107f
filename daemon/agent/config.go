package agent

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/daemon/subnet"
	"github.com/weftnet/weft/internal/backend"
	"net/netip"
)

func everything() labels.Selector { return labels.Everything() }

// Event reasons on the ConfigMap.
const (
	ReasonInvalid      = "InvalidNetConf"
	ReasonNeedsRestart = "NetConfNeedsRestart"
	ReasonApplied      = "NetConfApplied"
)

// loadConfig reads and validates net-conf.json. It returns the
// configuration to run with: the new one when valid, the previous one
// when the new one is invalid (with the error, which is reported), nil
// when there is none yet. A configuration is used whole or not at all.
func (a *Agent) loadConfig(ctx context.Context) (*config.NetConf, error) {
	cm, err := a.cms.Get(config.Name)
	if err != nil {
		reason := fmt.Sprintf("ConfigMap %s/%s: %v", config.Namespace, config.Name, err)
		return a.rejectConfig(ctx, nil, reason)
	}
	nc, err := config.Parse([]byte(cm.Data[config.Key]))
	if err == nil {
		err = nc.Validate(a.d.Backends.Validators(), a.environment())
	}
	if err == nil && a.d.Shaper != nil {
		err = a.d.Shaper.Validate(nc.Bandwidth)
	}
	if err != nil {
		return a.rejectConfig(ctx, cm, err.Error())
	}
	switch {
	case a.st.cfg == nil:
		a.d.Log.Info("configuration loaded", "network", nc.Network, "subnetLen", nc.SubnetLen, "backend", nc.Backend.Type, "cniVersion", nc.CNIVersion)
		a.st.cfg = nc
	case a.st.cfg.Equal(nc):
	case nc.Network != a.st.cfg.Network || nc.SubnetLen != a.st.cfg.SubnetLen:
		// Renumbering the pod network under running pods is not done live.
		msg := fmt.Sprintf("network %s/%d -> %s/%d is applied when weftd restarts (pods keep their addresses until then); running with %s",
			a.st.cfg.Network, a.st.cfg.SubnetLen, nc.Network, nc.SubnetLen, a.st.cfg.Network)
		a.event(ctx, cm, corev1.EventTypeWarning, ReasonNeedsRestart, msg)
		a.d.Status.Detail("config-pending", msg)
		a.d.Status.Set(api.CondConfig, "")
		return a.st.cfg, nil
	default:
		a.d.Log.Info("configuration changed", "backend", nc.Backend.Type, "cniVersion", nc.CNIVersion, "mtu", nc.MTU)
		a.event(ctx, cm, corev1.EventTypeNormal, ReasonApplied, "new net-conf.json applied on node "+a.opt.NodeName)
		a.st.cfg = nc
	}
	a.d.Status.Detail("config-pending", "")
	a.d.Status.Set(api.CondConfig, "")
	a.st.lastEvent = ""
	return a.st.cfg, nil
}

func (a *Agent) rejectConfig(ctx context.Context, cm *corev1.ConfigMap, reason string) (*config.NetConf, error) {
	// Readiness first: whoever sees the Event must find /readyz saying so.
	if a.st.cfg == nil {
		a.d.Status.Set(api.CondConfig, reason)
	} else {
		a.d.Status.Set(api.CondConfig, reason+" (still running the previous configuration)")
	}
	key := reason
	if cm != nil {
		key = cm.ResourceVersion + "|" + reason
	}
	if key != a.st.lastEvent {
		a.d.Metrics.ConfigErrors.Inc()
		a.d.Log.Error("invalid weft configuration; not applied", "reason", reason, "running_previous", a.st.cfg != nil)
		if cm != nil {
			a.event(ctx, cm, corev1.EventTypeWarning, ReasonInvalid, reason+" (not applied"+map[bool]string{true: "; the running configuration stays", false: ""}[a.st.cfg != nil]+")")
		}
		a.st.lastEvent = key
	}
	return a.st.cfg, fmt.Errorf("configuration: %s", reason)
}

// environment collects the node addresses and this node's assigned pod
// CIDR that a configuration must not clash with.
func (a *Agent) environment() config.Environment {
	var env config.Environment
	nodes, _ := a.nodes.List(everything())
	for _, n := range nodes {
		if ip := InternalIP(n); ip.IsValid() {
			env.NodeIPs = append(env.NodeIPs, ip)
		}
		if ip, err := netip.ParseAddr(n.Annotations[backend.AnnoPublicIP]); err == nil {
			env.NodeIPs = append(env.NodeIPs, ip)
		}
		if n.Name == a.opt.NodeName {
			env.NodePodCIDR = subnet.NodePodCIDR(n)
		}
	}
	if a.opt.PublicIP.IsValid() {
		env.NodeIPs = append(env.NodeIPs, a.opt.PublicIP)
	}
	return env
}

// event records an Event on the ConfigMap; failures are only logged.
func (a *Agent) event(ctx context.Context, cm *corev1.ConfigMap, typ, reason, msg string) {
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", cm.Name, time.Now().UnixNano()), Namespace: cm.Namespace},
		InvolvedObject: corev1.ObjectReference{Kind: "ConfigMap", APIVersion: "v1", Namespace: cm.Namespace, Name: cm.Name,
			UID: cm.UID, ResourceVersion: cm.ResourceVersion},
		Reason: reason, Message: msg, Type: typ, Count: 1,
		FirstTimestamp: now, LastTimestamp: now,
		Source:              corev1.EventSource{Component: "weftd", Host: a.opt.NodeName},
		ReportingController: "weft.dev/weftd", ReportingInstance: a.opt.NodeName,
	}
	if _, err := a.d.Client.CoreV1().Events(cm.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		a.d.Log.Warn("record event", "reason", reason, "err", err)
	}
}
