package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// pki holds the file names of everything generated for one control plane.
type pki struct {
	CACert, CAKey           string // cluster CA (also signs the admin client cert)
	ServingCert, ServingKey string // serving cert for 127.0.0.1/localhost, used by all components
	AdminCert, AdminKey     string // client cert CN=admin O=system:masters
	ProxyCert, ProxyKey     string // front-proxy client cert (CN=front-proxy-client) for the aggregator
	SAKey, SAPub            string // service-account token signing key pair (RSA 2048)
	TokenFile               string // --token-auth-file CSV
	AdminTokenFile          string // just the admin token

	caPEM                               []byte
	AdminToken, SchedulerToken, CMToken string
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// statePKI loads the PKI a previous run left in dir when keep is set and it is
// there (a restart: service-account tokens and kubeconfigs stay valid), else
// generates a new one.
func statePKI(dir string, keep bool) (*pki, error) {
	if keep {
		if _, err := os.Stat(filepath.Join(dir, "tokens.csv")); err == nil {
			return loadPKI(dir)
		}
	}
	return generatePKI(dir)
}

func pkiFiles(dir string) *pki {
	return &pki{
		CACert:         filepath.Join(dir, "ca.crt"),
		CAKey:          filepath.Join(dir, "ca.key"),
		ServingCert:    filepath.Join(dir, "apiserver.crt"),
		ServingKey:     filepath.Join(dir, "apiserver.key"),
		AdminCert:      filepath.Join(dir, "admin.crt"),
		AdminKey:       filepath.Join(dir, "admin.key"),
		ProxyCert:      filepath.Join(dir, "front-proxy-client.crt"),
		ProxyKey:       filepath.Join(dir, "front-proxy-client.key"),
		SAKey:          filepath.Join(dir, "sa.key"),
		SAPub:          filepath.Join(dir, "sa.pub"),
		TokenFile:      filepath.Join(dir, "tokens.csv"),
		AdminTokenFile: filepath.Join(dir, "admin-token"),
	}
}

// loadPKI reads back what generatePKI wrote: the CA for kubeconfigs, the
// static tokens from tokens.csv (admin, scheduler, controller-manager in order).
func loadPKI(dir string) (*pki, error) {
	p := pkiFiles(dir)
	var err error
	if p.caPEM, err = os.ReadFile(p.CACert); err != nil {
		return nil, err
	}
	csv, err := os.ReadFile(p.TokenFile)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSpace(string(csv)), "\n")
	tokens := []*string{&p.AdminToken, &p.SchedulerToken, &p.CMToken}
	if len(lines) != len(tokens) {
		return nil, fmt.Errorf("%s: %d lines, want %d", p.TokenFile, len(lines), len(tokens))
	}
	for i, line := range lines {
		*tokens[i], _, _ = strings.Cut(line, ",")
	}
	return p, nil
}

func generatePKI(dir string) (*pki, error) {
	p := pkiFiles(dir)
	now := time.Now()

	// CA
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "controlplane-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(p.CACert, p.caPEM, 0o644); err != nil {
		return nil, err
	}
	if err := writeKey(p.CAKey, caKey); err != nil {
		return nil, err
	}

	issue := func(certPath, keyPath string, tmpl *x509.Certificate) error {
		der, key, err := signLeaf(caCert, caKey, tmpl)
		if err != nil {
			return err
		}
		if err := writePEM(certPath, "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		return writeKey(keyPath, key)
	}

	// Serving certificate for every component (apiserver, scheduler, controller-manager).
	if err := issue(p.ServingCert, p.ServingKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback, net.ParseIP("10.0.0.1")},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
	}); err != nil {
		return nil, fmt.Errorf("serving cert: %w", err)
	}
	// Admin client certificate (system:masters).
	if err := issue(p.AdminCert, p.AdminKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("admin cert: %w", err)
	}

	// Front-proxy client certificate: lets the aggregator proxy to extension apiservers
	// and fills the requestheader part of kube-system/extension-apiserver-authentication,
	// which the scheduler and controller-manager read for their own authentication.
	if err := issue(p.ProxyCert, p.ProxyKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "front-proxy-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("front-proxy cert: %w", err)
	}

	// Service-account signing key.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.SAKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey), 0o600); err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.SAPub, "PUBLIC KEY", pubDER, 0o644); err != nil {
		return nil, err
	}

	// Static tokens: admin (system:masters) for tests; the scheduler runs as
	// system:kube-scheduler under the bootstrap RBAC policy as in a real cluster; the
	// controller-manager runs as system:kube-controller-manager in group system:masters so
	// that --use-service-account-credentials=false works (per-controller service accounts
	// cost about 4s of startup; pass --controller-manager-arg=--use-service-account-credentials=true
	// to get them).
	for _, t := range []*string{&p.AdminToken, &p.SchedulerToken, &p.CMToken} {
		if *t, err = randomToken(); err != nil {
			return nil, err
		}
	}
	csv := fmt.Sprintf("%s,admin,uid-admin,\"system:masters\"\n%s,system:kube-scheduler,uid-kube-scheduler\n%s,system:kube-controller-manager,uid-kube-controller-manager,\"system:masters\"\n",
		p.AdminToken, p.SchedulerToken, p.CMToken)
	if err := os.WriteFile(p.TokenFile, []byte(csv), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.AdminTokenFile, []byte(p.AdminToken), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// signLeaf issues a certificate for a new P-256 key from tmpl (subject, usages, SANs),
// valid for a year, signed by the CA.
func signLeaf(caCert *x509.Certificate, caKey crypto.Signer, tmpl *x509.Certificate) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl.SerialNumber = sn
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(365 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	return der, key, err
}
