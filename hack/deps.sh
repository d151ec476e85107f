#!/usr/bin/env bash
# Installs the host packages Weft's tests and local cluster need (Debian/Ubuntu).
set -euo pipefail
need=() lean=()
for pair in ip:iproute2 iptables:iptables ipset:ipset iperf3:iperf3 ping:iputils-ping tcpdump:tcpdump nft:nftables conntrack:conntrack bird:bird2; do
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
    guard=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
    fi
    apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
    [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
  fi
fi
