package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weftnet/weft/internal/nodeapi"
)

// DefaultSecureAddr is where weftd serves its operational API (HTTPS).
var DefaultSecureAddr = fmt.Sprintf("0.0.0.0:%d", nodeapi.DefaultPort)

// SecureHandler is the operational API: /metrics and every route of
// routes, each request behind the guard. /healthz and /readyz are not here:
// they stay open on the health address for probes.
func SecureHandler(routes *Routes, reg *prometheus.Registry, g *Guard) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(nodeapi.MetricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.Handle("/v1/", routes)
	return g.Wrap(mux)
}

// TLSConfig loads certFile/keyFile, or with both empty makes a self-signed
// certificate for host (the apiserver's proxy to pods does not verify a
// pod's certificate, so weftctl needs none it can check; Prometheus
// scraping directly sets insecure_skip_verify or is given a real cert).
func TLSConfig(certFile, keyFile, host string) (*tls.Config, error) {
	var cert tls.Certificate
	var err error
	if certFile != "" || keyFile != "" {
		cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	} else {
		cert, err = selfSigned(host)
	}
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

func selfSigned(host string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "weftd@" + host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{host},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses, tmpl.DNSNames = []net.IP{ip}, nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// ServeTLS listens on addr and serves h over TLS until ctx ends.
func ServeTLS(ctx context.Context, addr string, h http.Handler, cfg *tls.Config, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	return serve(ctx, tls.NewListener(ln, cfg), addr, h, tcpTimeouts, log)
}
