# Weft image: weftd plus the CNI plugins it installs (weft, weft-ipam and the
# reference portmap, bandwidth and loopback at v1.9.1).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags "-s -w" -o /out/ ./cmd/weftd ./plugins/weft ./plugins/weft-ipam
RUN for p in meta/portmap meta/bandwidth main/loopback; do \
      GOBIN=/out go install -trimpath -ldflags "-s -w" github.com/containernetworking/plugins/plugins/$p@v1.9.1 || exit 1; \
    done

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ENTRYPOINT ["weftd"]
