package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/server/flagz"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	cliflag "k8s.io/component-base/cli/flag"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"

	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type runConfig struct {
	dir              string
	exitOnStdinClose bool
	keepState        bool
	verbosity        int
	readyTimeout     time.Duration
	apiserverArgs    multiFlag
	schedulerArgs    multiFlag
	cmArgs           multiFlag
}

func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "controlplane: "+format+"\n", a...)
}

func runMain(args []string) int {
	var c runConfig
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.StringVar(&c.dir, "dir", "", "state directory (created if missing, kept on exit); default: a temp dir removed on exit")
	fs.BoolVar(&c.exitOnStdinClose, "exit-on-stdin-close", false, "shut down when stdin reaches EOF (so a dead test harness cannot leak the control plane)")
	fs.BoolVar(&c.keepState, "keep-state", false, "with --dir: restart the cluster a previous run left there (same etcd data, certificates, tokens and ports) instead of a fresh one")
	fs.IntVar(&c.verbosity, "v", 1, "log verbosity of the components (their logs go to files in --dir)")
	fs.DurationVar(&c.readyTimeout, "ready-timeout", 90*time.Second, "give up if not ready within this time")
	fs.Var(&c.apiserverArgs, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--feature-gates=X=true (repeatable; later flags win)")
	fs.Var(&c.schedulerArgs, "scheduler-arg", "extra kube-scheduler flag (repeatable)")
	fs.Var(&c.cmArgs, "controller-manager-arg", "extra kube-controller-manager flag (repeatable)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: controlplane run [flags]\n\nOn success prints one line to stdout:\n  READY kubeconfig=DIR/kubeconfig server=https://127.0.0.1:PORT\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "controlplane run: unexpected arguments %q\n", fs.Args())
		return 2
	}
	code, err := run(c)
	if err != nil {
		progress("error: %v", err)
	}
	return code
}

// freePorts binds n loopback ports at once (so they are distinct) and releases them.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// portsFile records a run's ports in its directory, so that a restart with
// --keep-state serves on the same address (clients keep their kubeconfigs) and
// etcd's member keeps the peer URL stored in its data.
const portsFile = "ports"

// statePorts returns the ports recorded in dir, else n free ones, recorded.
func statePorts(dir string, n int) ([]int, error) {
	path := filepath.Join(dir, portsFile)
	if text, err := os.ReadFile(path); err == nil {
		fields := strings.Fields(string(text))
		ports := make([]int, 0, n)
		for _, f := range fields {
			p, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			ports = append(ports, p)
		}
		if len(ports) != n {
			return nil, fmt.Errorf("%s: %d ports, want %d", path, len(ports), n)
		}
		return ports, nil
	}
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	words := make([]string, len(ports))
	for i, p := range ports {
		words[i] = strconv.Itoa(p)
	}
	return ports, os.WriteFile(path, []byte(strings.Join(words, " ")+"\n"), 0o644)
}

// child is a component running as a separate process of this binary.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// startChild runs `<self> <sub> args...` with output to logPath. The child gets SIGKILL
// when this process dies (Pdeathsig). Pdeathsig fires when the *thread* that forked the
// child exits, so the fork happens on a goroutine locked to its OS thread for the whole
// life of the child.
func startChild(name, sub, logPath string, args []string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	c := &child{name: name, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine, after the child
		defer logFile.Close()
		c.cmd = exec.Command(self, append([]string{sub}, args...)...)
		c.cmd.Stdin = nil
		c.cmd.Stdout = logFile
		c.cmd.Stderr = logFile
		c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.cmd.Start(); err != nil {
			started <- err
			close(c.done)
			return
		}
		started <- nil
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *child) stop(grace time.Duration) {
	if c == nil || c.cmd == nil || c.cmd.Process == nil || c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func startEtcd(dir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "controlplane"
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.WalDir = ""
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cfg.UnsafeNoFsync = true // test cluster: speed over durability
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.InitialClusterToken = "controlplane"
	cfg.ListenMetricsUrls = nil
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(30 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, errors.New("etcd did not become ready within 30s")
	}
}

// runAPIServer is NewAPIServerCommand's RunE with our own context instead of the
// process-wide signal context (which may be set up only once per process).
func runAPIServer(ctx context.Context, args []string, logOut io.Writer) error {
	s := apiserveroptions.NewServerRunOptions()
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	namedFlagSets := s.Flags()
	s.Flagz = flagz.NamedFlagSetsReader{FlagSets: namedFlagSets}
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	for _, f := range namedFlagSets.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	if err := logsapi.ValidateAndApplyWithOptions(s.Logs, &logsapi.LoggingOptions{ErrorStream: logOut, InfoStream: logOut}, featureGate); err != nil {
		return err
	}
	cliflag.PrintFlags(fs)
	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return errors.Join(errs...)
	}
	featureGate.(featuregate.MutableFeatureGate).AddMetrics()
	s.GenericServerRunOptions.ComponentGlobalsRegistry.AddMetrics()
	return apiserverapp.Run(ctx, completed)
}

func writeKubeconfig(path, server string, caPEM []byte, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["controlplane"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["controlplane"] = &clientcmdapi.Context{Cluster: "controlplane", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "controlplane"
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// logTail formats the end of a component log for an error message.
func logTail(path string) string {
	t := tailFile(path, 30)
	if t == "" {
		return " (log: " + path + ")"
	}
	return "\n--- tail of " + path + " ---\n" + t
}

// tailFile returns the last n lines of a file (for error reports).
func tailFile(path string, n int) string {
	if n <= 0 {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

func run(c runConfig) (code int, retErr error) {
	start := time.Now()

	// State directory.
	removeDir := false
	if c.dir == "" {
		d, err := os.MkdirTemp("", "controlplane-")
		if err != nil {
			return 1, err
		}
		c.dir, removeDir = d, true
	} else {
		abs, err := filepath.Abs(c.dir)
		if err != nil {
			return 1, err
		}
		c.dir = abs
		if err := os.MkdirAll(c.dir, 0o755); err != nil {
			return 1, err
		}
		// Every run is a fresh cluster unless asked to restart the one left there.
		if !c.keepState {
			if err := os.RemoveAll(filepath.Join(c.dir, "etcd")); err != nil {
				return 1, err
			}
			_ = os.Remove(filepath.Join(c.dir, portsFile))
		}
		_ = os.Remove(filepath.Join(c.dir, "kubeconfig"))
	}
	if c.keepState && removeDir {
		return 2, errors.New("--keep-state needs --dir")
	}
	defer func() {
		if removeDir {
			_ = os.RemoveAll(c.dir)
		}
	}()

	// Stop on SIGTERM/SIGINT, or on stdin EOF when asked to.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if c.exitOnStdinClose {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			cancel(errors.New("stdin closed"))
		}()
	}

	ports, err := statePorts(c.dir, 5)
	if err != nil {
		return 1, err
	}
	etcdClientPort, etcdPeerPort, apiPort, schedPort, cmPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	server := "https://127.0.0.1:" + strconv.Itoa(apiPort)

	p, err := statePKI(c.dir, c.keepState)
	if err != nil {
		return 1, fmt.Errorf("certificates: %w", err)
	}

	// Everything the components log goes to files in the state directory; klog (used by
	// client-go, grpc and the apiserver) is pointed at apiserver.log right away so nothing
	// reaches stdout/stderr even before the apiserver applies its logging flags.
	apiLogPath := filepath.Join(c.dir, "apiserver.log")
	apiLog, err := os.OpenFile(apiLogPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return 1, err
	}
	defer apiLog.Close()
	klog.LogToStderr(false)
	klog.SetOutput(apiLog)

	// etcd
	e, err := startEtcd(c.dir, etcdClientPort, etcdPeerPort)
	if err != nil {
		return 1, fmt.Errorf("start etcd (log: %s): %w", filepath.Join(c.dir, "etcd.log"), err)
	}
	defer func() {
		done := make(chan struct{})
		go func() { e.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			progress("etcd did not stop within 10s")
		}
	}()
	progress("etcd ready on 127.0.0.1:%d (%.1fs)", etcdClientPort, time.Since(start).Seconds())

	// kube-apiserver, in this process.
	apiArgs := []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(etcdClientPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--tls-cert-file=" + p.ServingCert,
		"--tls-private-key-file=" + p.ServingKey,
		"--client-ca-file=" + p.CACert,
		"--token-auth-file=" + p.TokenFile,
		"--requestheader-client-ca-file=" + p.CACert,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.ProxyCert,
		"--proxy-client-key-file=" + p.ProxyKey,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-signing-key-file=" + p.SAKey,
		"--service-account-key-file=" + p.SAPub,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--disable-admission-plugins=TaintNodesByCondition",
		"--allow-privileged=true",
		// For real nodes (kubelet subcommand): logs, exec and port-forward reach a kubelet
		// at its node IP (its hostname would need DNS) with the admin client certificate,
		// which the kubelet authorises through a SubjectAccessReview.
		"--kubelet-preferred-address-types=InternalIP",
		"--kubelet-client-certificate=" + p.AdminCert,
		"--kubelet-client-key=" + p.AdminKey,
		// The lease reconciler would try to publish 127.0.0.1 as the endpoint of the
		// "kubernetes" Service, which validation rejects (loopback) every 10s.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(c.dir, "apiserver-certs"), // unused: serving cert given
		"--v=" + strconv.Itoa(c.verbosity),
	}
	apiArgs = append(apiArgs, c.apiserverArgs...)
	apiExited := make(chan struct{})
	var apiErr error
	apiCtx, apiCancel := context.WithCancel(context.Background())
	defer apiCancel()
	go func() { apiErr = runAPIServer(apiCtx, apiArgs, apiLog); close(apiExited) }()
	defer func() {
		apiCancel()
		select {
		case <-apiExited:
		case <-time.After(15 * time.Second):
			progress("kube-apiserver did not stop within 15s")
		}
		klog.Flush()
	}()

	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(p.caPEM)
	httpClient := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool}},
	}
	deadline := time.Now().Add(c.readyTimeout)
	failed := func(what string) error {
		if err := context.Cause(ctx); err != nil {
			return fmt.Errorf("interrupted while waiting for %s: %v", what, err)
		}
		return fmt.Errorf("%s not ready within %s", what, c.readyTimeout)
	}
	// poll calls check every 100ms until it returns true, ctx ends or the deadline passes;
	// fatal is consulted for early component death.
	poll := func(what string, check func() bool, fatal func() error) error {
		for {
			if check() {
				return nil
			}
			if err := fatal(); err != nil {
				return err
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				return failed(what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	httpOK := func(url, token string) bool {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	apiFatal := func() error {
		select {
		case <-apiExited:
			return fmt.Errorf("kube-apiserver exited: %v%s", apiErr, logTail(apiLogPath))
		default:
			return nil
		}
	}
	if err := poll("kube-apiserver /readyz", func() bool { return httpOK(server+"/readyz", p.AdminToken) }, apiFatal); err != nil {
		return 1, err
	}
	progress("kube-apiserver ready on %s (%.1fs)", server, time.Since(start).Seconds())

	// Kubeconfigs for the components; the admin one is written last, just before READY.
	schedKubeconfig := filepath.Join(c.dir, "scheduler.kubeconfig")
	cmKubeconfig := filepath.Join(c.dir, "controller-manager.kubeconfig")
	if err := writeKubeconfig(schedKubeconfig, server, p.caPEM, "system:kube-scheduler", p.SchedulerToken); err != nil {
		return 1, err
	}
	if err := writeKubeconfig(cmKubeconfig, server, p.caPEM, "system:kube-controller-manager", p.CMToken); err != nil {
		return 1, err
	}

	v := "--v=" + strconv.Itoa(c.verbosity)
	schedArgs := append([]string{
		"--kubeconfig=" + schedKubeconfig,
		"--authentication-kubeconfig=" + schedKubeconfig,
		"--authorization-kubeconfig=" + schedKubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(schedPort),
		"--tls-cert-file=" + p.ServingCert,
		"--tls-private-key-file=" + p.ServingKey,
		v,
	}, c.schedulerArgs...)
	cmArgs := append([]string{
		"--kubeconfig=" + cmKubeconfig,
		"--authentication-kubeconfig=" + cmKubeconfig,
		"--authorization-kubeconfig=" + cmKubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(cmPort),
		"--tls-cert-file=" + p.ServingCert,
		"--tls-private-key-file=" + p.ServingKey,
		// No kubelets post heartbeats: without this, nodes would go NotReady and get tainted.
		"--controllers=*,-node-lifecycle-controller",
		"--use-service-account-credentials=false", // see generatePKI; saves ~4s of startup
		"--service-account-private-key-file=" + p.SAKey,
		"--root-ca-file=" + p.CACert,
		"--cluster-signing-cert-file=" + p.CACert,
		"--cluster-signing-key-file=" + p.CAKey,
		v,
	}, c.cmArgs...)

	sched, err := startChild("kube-scheduler", "scheduler", filepath.Join(c.dir, "scheduler.log"), schedArgs)
	if err != nil {
		return 1, err
	}
	defer sched.stop(5 * time.Second)
	cm, err := startChild("kube-controller-manager", "controller-manager", filepath.Join(c.dir, "controller-manager.log"), cmArgs)
	if err != nil {
		return 1, err
	}
	defer cm.stop(5 * time.Second)
	// The deferred stops run in reverse order: children first, then the apiserver, then etcd.

	childFatal := func() error {
		if err := apiFatal(); err != nil {
			return err
		}
		for _, ch := range []*child{sched, cm} {
			if ch.exited() {
				log := filepath.Join(c.dir, map[*child]string{sched: "scheduler.log", cm: "controller-manager.log"}[ch])
				return fmt.Errorf("%s exited: %v%s", ch.name, ch.err, logTail(log))
			}
		}
		return nil
	}

	restCfg := &rest.Config{
		Host:            server,
		BearerToken:     p.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM},
		Timeout:         5 * time.Second,
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return 1, err
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	checks := []struct {
		what  string
		check func() bool
	}{
		{"namespace default", func() bool {
			_, err := cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
			return err == nil
		}},
		{"serviceaccount default/default", func() bool {
			_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				return false
			}
			return err == nil
		}},
		{"kube-scheduler /readyz", func() bool { return httpOK(fmt.Sprintf("https://127.0.0.1:%d/readyz", schedPort), "") }},
		{"kube-controller-manager /healthz", func() bool { return httpOK(fmt.Sprintf("https://127.0.0.1:%d/healthz", cmPort), "") }},
	}
	for i, ch := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = poll(ch.what, ch.check, childFatal)
			if errs[i] == nil {
				progress("%s ok (%.1fs)", ch.what, time.Since(start).Seconds())
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 1, err
	}

	kubeconfig := filepath.Join(c.dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, p.caPEM, "admin", p.AdminToken); err != nil {
		return 1, err
	}
	progress("ready in %.1fs (logs in %s)", time.Since(start).Seconds(), c.dir)
	fmt.Fprintf(os.Stdout, "READY kubeconfig=%s server=%s\n", kubeconfig, server)

	// Run until told to stop, or until a component dies.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			cause := context.Cause(ctx)
			progress("shutting down (%v)", cause)
			return 0, nil
		case <-tick.C:
			if err := childFatal(); err != nil {
				progress("shutting down: %v", err)
				return 1, nil
			}
		}
	}
}
