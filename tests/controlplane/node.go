package main

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// nodeCredentialsMain writes a kubeconfig for a kubelet: a client certificate for
// system:node:NAME in group system:nodes, which is what the Node authorizer and the
// NodeRestriction admission plugin of "run" recognise as that node's kubelet.
func nodeCredentialsMain(args []string) int {
	fs := flag.NewFlagSet("node-credentials", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory of a running \"controlplane run\" (holds ca.crt, ca.key, kubeconfig)")
	node := fs.String("node", "", "node name")
	out := fs.String("out", "", "kubeconfig file to write")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *dir == "" || *node == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: controlplane node-credentials --dir DIR --node NAME --out FILE")
		return 2
	}
	if err := writeNodeKubeconfig(*dir, *node, *out); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane node-credentials: %v\n", err)
		return 1
	}
	return 0
}

func writeNodeKubeconfig(dir, node, out string) error {
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return err
	}
	block, _ := pem.Decode(caPEM)
	if block == nil {
		return fmt.Errorf("%s/ca.crt: no PEM block", dir)
	}
	caCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return err
	}
	block, _ = pem.Decode(keyPEM)
	if block == nil {
		return fmt.Errorf("%s/ca.key: no PEM block", dir)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return err
	}
	caKey, ok := parsed.(crypto.Signer)
	if !ok {
		return fmt.Errorf("%s/ca.key: not a signing key", dir)
	}
	admin, err := clientcmd.LoadFromFile(filepath.Join(dir, "kubeconfig"))
	if err != nil {
		return err
	}
	cluster, ok := admin.Clusters["controlplane"]
	if !ok {
		return fmt.Errorf("%s/kubeconfig: no cluster \"controlplane\"", dir)
	}

	der, key, err := signLeaf(caCert, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["controlplane"] = &clientcmdapi.Cluster{Server: cluster.Server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[node] = &clientcmdapi.AuthInfo{
		ClientCertificateData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		ClientKeyData:         pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	cfg.Contexts["controlplane"] = &clientcmdapi.Context{Cluster: "controlplane", AuthInfo: node}
	cfg.CurrentContext = "controlplane"
	return clientcmd.WriteToFile(*cfg, out)
}
