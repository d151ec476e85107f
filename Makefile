# Weft — build, test, bench, local cluster.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
REF_CNI := $(BIN)/ref
REF_CNI_VERSION := v1.9.1
export WEFT_BIN_DIR := $(BIN)
export WEFT_REF_CNI_DIR := $(REF_CNI)

.PHONY: all build test test-unit test-e2e test-image image bench deps ref-plugins clean cluster-build cluster-up cluster-down demo

all: build

# Every binary of the product into bin/.
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./plugins/... ./cmd/...
	@ln -sf weftctl $(BIN)/kubectl-weft  # the kubectl plugin "kubectl weft"

# The reference CNI plugins, unmodified, for chaining and comparison.
ref-plugins:
	@mkdir -p $(REF_CNI)
	@for p in meta/portmap meta/bandwidth main/bridge ipam/host-local main/loopback; do \
	  n=$${p#*/}; [ -x $(REF_CNI)/$$n ] || GOBIN=$(REF_CNI) $(GO) install github.com/containernetworking/plugins/plugins/$$p@$(REF_CNI_VERSION) || exit 1; \
	done

# Host packages the tests need (Debian). Safe to run again.
deps:
	@hack/deps.sh

# All tiers: the image (built from the Dockerfile and checked under a private
# dockerd, first: TestClusterPodsGetIPsFromNodeCIDRs runs the DaemonSet from
# it), unit (rootless), privileged (netns), end to end (local cluster).
# The local cluster's own module (hack/) is vetted and tested too.
test: deps build ref-plugins cluster-build
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$bad" ]; then echo "gofmt needed: $$bad" >&2; exit 1; fi
	$(GO) vet ./...
	cd hack && $(GO) vet ./... && $(GO) test -count=1 ./...
	$(MAKE) --no-print-directory test-image
	WEFT_E2E_IMAGE=$(BIN)/weft-image.tar $(GO) test -count=1 -p 1 -timeout 60m ./...

# The image from the unmodified Dockerfile (IMAGE=...), saved to bin/weft-image.tar.
# A private dockerd runs only for the build (hack/image.sh says why); base
# images that cannot be pulled get local stand-ins under the same names.
IMAGE ?= ghcr.io/weftnet/weft:dev
image: deps
	IMAGE=$(IMAGE) hack/image.sh build

# Builds the image (bin/weft-image.tar) and checks it (test/image) under one private dockerd.
test-image: deps
	IMAGE=$(IMAGE) hack/image.sh daemon $(GO) test -count=1 -v -timeout 30m ./test/image/

test-unit:
	$(GO) test -count=1 ./...

bench: deps build ref-plugins cluster-build
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 1x -timeout 60m ./bench/...

clean:
	rm -rf $(BIN)

NODES ?= 3

# Control plane (k8s v1.37.2), kubectl, etcd, node emulator, weft binaries -> .localcluster/bin (cached).
cluster-build: ref-plugins
	hack/localcluster build

cluster-up: ref-plugins
	hack/localcluster up --nodes $(NODES)

cluster-down:
	hack/localcluster down

# From a fresh machine: installs, builds, brings up NODES nodes, runs pods, prints IPs and a probe matrix.
demo: deps ref-plugins
	NODES=$(NODES) hack/demo.sh
