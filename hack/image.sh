#!/usr/bin/env bash
# Builds Weft's image from the unmodified Dockerfile.
#
#   hack/image.sh build            build $IMAGE (default ghcr.io/weftnet/weft:dev)
#                                  and save it to bin/weft-image.tar (docker save)
#   hack/image.sh daemon CMD...    run CMD with DOCKER_HOST (and WEFT_DOCKER_HOST)
#                                  set to a private dockerd
#
# Docker: unless WEFT_DOCKER_HOST names a daemon to use, a private dockerd is
# started for the duration of the command and stopped afterwards, with its
# own data root (cached in $WEFT_IMAGE_CACHE, default /var/cache/weft-image),
# exec root, pidfile and socket, and with --iptables=false --ip6tables=false
# --bridge=none: it never touches the host's iptables or creates docker0
# (checked after it stops). Containers use --network none or host.
#
# Base images: where a FROM image cannot be pulled (no registry reachable), a
# local stand-in is made under the same name and the build says so:
#   debian:bookworm-slim  debootstrap --variant=minbase bookworm from the
#                         mirror apt uses here, imported with docker import;
#   golang:X-bookworm     that rootfs plus ca-certificates and the machine's
#                         Go toolchain (/usr/local/go, must be go X) and
#                         CA bundle (for the module proxy).
# Stand-ins stay in the cached data root, so a second build is fast.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-ghcr.io/weftnet/weft:dev}
CACHE=${WEFT_IMAGE_CACHE:-/var/cache/weft-image}
GOROOT_HOST=${WEFT_IMAGE_GOROOT:-/usr/local/go}
# Debian's docker.io client (20.10) matches its daemon; a newer client found
# first in PATH would want buildx.
DOCKER_CLI=${DOCKER_CLI:-$(command -v /usr/bin/docker || command -v docker)}

log() { echo "image: $*" >&2; }
die() { log "$*"; exit 1; }
docker() { "$DOCKER_CLI" "$@"; }

# dockerd's footprint in the host's packet filter: chains named DOCKER* and
# the FORWARD policy, in both iptables modes and both families.
netfilter_footprint() {
  local t
  for t in iptables-legacy iptables-nft ip6tables-legacy ip6tables-nft; do
    command -v "$t-save" >/dev/null || continue
    echo "$t: $("$t" -w -S FORWARD 2>/dev/null | head -1)"
    "$t-save" 2>/dev/null | grep -E '^:DOCKER|-j DOCKER' | sed "s/^/$t: /" || true
  done
  ip -o link show docker0 2>/dev/null || true
}

stop_daemon() {
  local run=$1 pid
  pid=$(cat "$run/dockerd.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { log "dockerd $pid did not stop: SIGKILL"; kill -9 "$pid"; }
  fi
  # What a dockerd killed hard can leave mounted under its roots.
  grep -oE " ($run|$CACHE/docker)/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$run"
  # dockerd 20.10 writes a trust key into /etc/docker whatever its roots.
  [ -n "${KEY_BEFORE:-}" ] || rm -f /etc/docker/key.json
  local after
  after=$(netfilter_footprint)
  if [ "$after" != "$FOOTPRINT_BEFORE" ]; then
    log "host packet filter changed while dockerd ran:"
    diff <(echo "$FOOTPRINT_BEFORE") <(echo "$after") >&2 || true
    return 1
  fi
}

# with_daemon CMD...: runs CMD with DOCKER_HOST set to a private dockerd.
with_daemon() {
  if [ -n "${WEFT_DOCKER_HOST:-}" ]; then
    export DOCKER_HOST=$WEFT_DOCKER_HOST
    "$@"
    return
  fi
  command -v dockerd >/dev/null || die "dockerd missing (make deps installs docker.io)"
  mkdir -p "$CACHE"
  exec 9>"$CACHE/lock"
  flock -x 9 # one daemon per data root
  local run rc=0
  run=$(mktemp -d /run/weft-image.XXXXXX)
  FOOTPRINT_BEFORE=$(netfilter_footprint)
  KEY_BEFORE=$([ -e /etc/docker/key.json ] && echo yes || true)
  trap 'stop_daemon "'"$run"'"; exit 130' INT TERM
  trap 'stop_daemon "'"$run"'"' EXIT
  echo '{}' >"$run/daemon.json"
  dockerd --config-file "$run/daemon.json" --data-root "$CACHE/docker" --exec-root "$run/exec" \
    --pidfile "$run/dockerd.pid" -H "unix://$run/docker.sock" \
    --iptables=false --ip6tables=false --bridge=none --ip-forward=false --ip-masq=false \
    --userland-proxy=false --log-level warn >"$run/dockerd.log" 2>&1 9>&- & # not holding the lock
  export DOCKER_HOST=unix://$run/docker.sock
  export WEFT_DOCKER_HOST=$DOCKER_HOST # for CMD: test/image, a nested build
  for _ in $(seq 150); do
    docker version >/dev/null 2>&1 && break
    kill -0 $! 2>/dev/null || { cat "$run/dockerd.log" >&2; stop_daemon "$run"; die "dockerd exited"; }
    sleep 0.2
  done
  docker version >/dev/null 2>&1 || { cat "$run/dockerd.log" >&2; stop_daemon "$run"; die "dockerd did not answer"; }
  log "private dockerd pid $(cat "$run/dockerd.pid") at $DOCKER_HOST (data root $CACHE/docker)"
  set +e
  (set -e; "$@") # a subshell, so that errexit holds inside CMD's functions
  rc=$?
  set -e
  trap - EXIT INT TERM
  stop_daemon "$run" || rc=1
  unset DOCKER_HOST WEFT_DOCKER_HOST
  return $rc
}

debian_mirror() {
  if [ -n "${WEFT_DEBIAN_MIRROR:-}" ]; then echo "$WEFT_DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ')
  echo "${m:-http://deb.debian.org/debian}"
}

# The name is usable when present already or pullable.
have_or_pull() {
  docker image inspect "$1" >/dev/null 2>&1 && return 0
  timeout 60 "$DOCKER_CLI" pull -q "$1" >/dev/null 2>&1
}

standin_debian() {
  local name=$1 suite=${1#debian:} tar=$CACHE/rootfs-${1#debian:}.tar mirror
  suite=${suite%-slim}
  mirror=$(debian_mirror)
  if [ ! -s "$tar" ]; then
    command -v debootstrap >/dev/null || die "debootstrap missing (make deps installs it)"
    local root
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    log "debootstrap --variant=minbase $suite from $mirror"
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 ||
      { tail -20 "$root.log" >&2; rm -rf "$root" "$root.log"; die "debootstrap failed"; }
    # Like the official image: deb822 sources with updates and security.
    rm -f "$root/etc/apt/sources.list"
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" "$suite" "$suite" "${mirror%/debian*}/debian-security" "$suite" >"$root/etc/apt/sources.list.d/debian.sources"
    # Like the official -slim image: no docs, man pages or locales, now or
    # from later apt installs (debuerreotype's slimify).
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/man/*' \
      'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/lintian/*' >"$root/etc/dpkg/dpkg.cfg.d/docker"
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    # ...and apt configured as in the official image: no package caches or
    # downloaded .debs left in layers, no translations.
    printf '%s\n' 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
      'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
      'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' >"$root/etc/apt/apt.conf.d/docker-clean"
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
    rm -rf "$root"/usr/share/{info,locale,man,groff,lintian}/* \
      "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
    tar -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root" "$root.log"
  fi
  log "STAND-IN: $name is not pullable; importing a debootstrap $suite minbase rootfs ($mirror) as $name"
  docker import -c 'CMD ["bash"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -m "weft stand-in: debootstrap --variant=minbase $suite $mirror" "$tar" "$name" >/dev/null
}

standin_golang() {
  local name=$1 tag=${1#golang:} want suite have ctx
  want=${tag%%-*} suite=${tag#*-}
  have=$("$GOROOT_HOST/bin/go" env GOVERSION) || die "no Go toolchain at $GOROOT_HOST"
  case "$have" in go"$want" | go"$want".*) ;; *) die "$name stand-in needs go$want, $GOROOT_HOST has $have" ;; esac
  ensure_base "debian:$suite-slim"
  ctx=$(mktemp -d "$CACHE/golang.XXXXXX")
  cp -a "$GOROOT_HOST" "$ctx/go"
  # This machine's trust store: its egress to the module proxy may pass a
  # TLS proxy whose CA only the host trusts.
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  cat >"$ctx/Dockerfile" <<EOF
FROM debian:$suite-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY go /usr/local/go
ENV GOLANG_VERSION=${have#go} GOTOOLCHAIN=local GOPATH=/go PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /go
EOF
  log "STAND-IN: $name is not pullable; building it from debian:$suite-slim, this machine's $have ($GOROOT_HOST) and CA bundle"
  DOCKER_BUILDKIT=0 docker build -q --network host -t "$name" "$ctx" >/dev/null || { rm -rf "$ctx"; die "build $name stand-in failed"; }
  rm -rf "$ctx"
}

ensure_base() {
  have_or_pull "$1" && return 0
  case "$1" in
  debian:*) standin_debian "$1" ;;
  golang:*) standin_golang "$1" ;;
  *) die "base image $1 cannot be pulled and has no stand-in recipe" ;;
  esac
}

build() {
  local from
  for from in $(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile); do
    ensure_base "$from"
  done
  log "docker build -t $IMAGE (Dockerfile unmodified)"
  # RUN steps use the host network: the module proxy and the Debian mirror.
  # The build stage is tagged too, so that it stays as the next build's
  # cache while older, now untagged, layers are pruned.
  DOCKER_BUILDKIT=0 docker build --network host --target build -t weft-image-cache/build . >&2
  DOCKER_BUILDKIT=0 docker build --network host -t "$IMAGE" . >&2
  docker image prune -f >/dev/null
  local size
  size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
  log "built $IMAGE: $((size / 1000000)) MB ($size bytes)"
  # A copy outside the daemon (a private one leaves with its data root):
  # for docker load, kind load image-archive, hack/localcluster up --image.
  mkdir -p bin
  docker save -o bin/weft-image.tar.tmp "$IMAGE"
  mv bin/weft-image.tar.tmp bin/weft-image.tar
  log "saved to bin/weft-image.tar"
}

case "${1:-build}" in
build) with_daemon build ;;
daemon)
  shift
  [ $# -gt 0 ] || die "usage: hack/image.sh daemon CMD..."
  with_daemon "$@"
  ;;
*) die "usage: hack/image.sh build | daemon CMD..." ;;
esac
