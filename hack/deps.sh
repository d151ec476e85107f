#!/usr/bin/env bash
# Installs the host packages Weft's tests and local cluster need (Debian/Ubuntu).
set -euo pipefail
need=() lean=()
for pair in ip:iproute2 iptables:iptables ipset:ipset iperf3:iperf3 ping:iputils-ping tcpdump:tcpdump nft:nftables conntrack:conntrack bird:bird2 ethtool:ethtool nstat:iproute2 unshare:util-linux; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# The image build (hack/image.sh): without recommends (apparmor, needrestart).
for pair in dockerd:docker.io debootstrap:debootstrap; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || lean+=("$pkg")
done
if [ ${#need[@]} -gt 0 ] || [ ${#lean[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "deps: need root to install: ${need[*]} ${lean[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then apt-get install -y -qq "${need[@]}" >/dev/null; fi
  if [ ${#lean[@]} -gt 0 ]; then
    # Installing docker.io must not start the system's dockerd (it would
    # rewrite the host's iptables): hack/image.sh runs a private one.
    rcd=${WEFT_POLICY_RC_D:-/usr/sbin/policy-rc.d}
    guard=
    if [ ! -e "$rcd" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$rcd" && chmod +x "$rcd" && guard=1
    fi
    apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
    [ -z "$guard" ] || rm -f "$rcd"
    # Nor later: a boot or a docker client would start it (socket
    # activation). Without a running systemd these only touch unit links.
    if [[ " ${lean[*]} " == *" docker.io "* ]] && command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true
      systemctl mask docker.service docker.socket >/dev/null 2>&1 || true
    fi
  fi
fi
