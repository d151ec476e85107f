package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// pki is the cluster's key material, all under <state>/pki.
type pki struct {
	dir string
}

func (p pki) path(name string) string { return filepath.Join(p.dir, name) }

// CA returns the CA certificate PEM.
func (p pki) CA() ([]byte, error) { return os.ReadFile(p.path("ca.crt")) }

// ensure creates the CA, the apiserver serving certificate and the
// service-account signing key once; existing files are kept.
func (p pki) ensure(serverIPs []net.IP) error {
	if _, err := os.Stat(p.path("apiserver.crt")); err == nil {
		return nil
	}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return fmt.Errorf("create pki dir: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "weft-localcluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("parse CA certificate: %w", err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate apiserver key: %w", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		IPAddresses: serverIPs,
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("create apiserver certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return fmt.Errorf("marshal service-account public key: %w", err)
	}
	files := []struct {
		name string
		typ  string
		der  []byte
		key  any
	}{
		{"ca.crt", "CERTIFICATE", caDER, nil},
		{"ca.key", "", nil, caKey},
		{"apiserver.key", "", nil, srvKey},
		{"sa.key", "", nil, saKey},
		{"sa.pub", "PUBLIC KEY", saPub, nil},
		{"apiserver.crt", "CERTIFICATE", srvDER, nil}, // last: marks completion
	}
	for _, f := range files {
		der, typ := f.der, f.typ
		if f.key != nil {
			der, err = x509.MarshalECPrivateKey(f.key.(*ecdsa.PrivateKey))
			if err != nil {
				return fmt.Errorf("marshal %s: %w", f.name, err)
			}
			typ = "EC PRIVATE KEY"
		}
		data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
		if err := os.WriteFile(p.path(f.name), data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}

// tokenUser is one line of the apiserver's static token file.
type tokenUser struct {
	Name   string
	Groups []string
}

// tokens returns the bearer token of each user, creating the token file
// (token,user,uid,"groups") on first use and adding users not yet in it.
func (p pki) tokens(users []tokenUser) (map[string]string, error) {
	file := p.path("tokens.csv")
	out := map[string]string{}
	data, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read token file: %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ",", 4)
		if len(parts) >= 2 {
			out[parts[1]] = parts[0]
		}
	}
	var b strings.Builder
	b.Write(data)
	for _, u := range users {
		if _, ok := out[u.Name]; ok {
			continue
		}
		raw := make([]byte, 24)
		if _, err := rand.Read(raw); err != nil {
			return nil, fmt.Errorf("random token: %w", err)
		}
		tok := hex.EncodeToString(raw)
		out[u.Name] = tok
		fmt.Fprintf(&b, "%s,%s,%s,\"%s\"\n", tok, u.Name, u.Name, strings.Join(u.Groups, ","))
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		return nil, fmt.Errorf("write token file: %w", err)
	}
	return out, nil
}

// writeKubeconfig writes a token kubeconfig for server with the CA inline.
func writeKubeconfig(path, server string, ca []byte, user, token string) error {
	const tmpl = `apiVersion: v1
kind: Config
clusters:
- name: weft-local
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: weft-local
  context:
    cluster: weft-local
    user: %s
current-context: weft-local
`
	data := fmt.Sprintf(tmpl, server, b64(ca), user, token, user)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
