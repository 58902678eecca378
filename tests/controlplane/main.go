// Command controlplane runs a real Kubernetes control plane (etcd, kube-apiserver,
// kube-scheduler, kube-controller-manager) on loopback for integration tests.
//
// Subcommands:
//
//	controlplane run [--dir DIR] [--exit-on-stdin-close] [...]   the whole control plane
//	controlplane scheduler [kube-scheduler flags]                 used by run (child process)
//	controlplane controller-manager [kube-controller-manager flags] used by run (child process)
//	controlplane apiserver [kube-apiserver flags]                 stand-alone apiserver (debugging)
//	controlplane kubelet [kubelet flags]                          a real node's kubelet
//	controlplane node-credentials --dir DIR --node NAME --out F   a kubelet kubeconfig for NAME
//	controlplane version                                          print the Kubernetes version
//
// See README.md for the contract.
package main

import (
	"context"
	"fmt"
	"os"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	"k8s.io/component-base/version"

	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	cmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = `usage: controlplane <command> [flags]

commands:
  run                  start etcd, kube-apiserver, kube-scheduler and kube-controller-manager
                       on loopback (see "controlplane run --help")
  scheduler            run kube-scheduler (flags as upstream; used by "run")
  controller-manager   run kube-controller-manager (flags as upstream; used by "run")
  apiserver            run kube-apiserver alone (flags as upstream; for debugging)
  kubelet              run a kubelet (flags as upstream), for real nodes under "run"
  node-credentials     write a kubeconfig with a client certificate for node NAME
                       (system:node:NAME), signed by the CA of a "run" state directory
  version              print the Kubernetes version this binary was built from
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	sub, args := os.Args[1], os.Args[2:]
	switch sub {
	case "run":
		os.Exit(runMain(args))
	case "scheduler", "kube-scheduler":
		cmd := schedulerapp.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "controller-manager", "kube-controller-manager":
		cmd := cmapp.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "apiserver", "kube-apiserver":
		cmd := apiserverapp.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kubelet":
		cmd := kubeletapp.NewKubeletCommand(context.Background())
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "node-credentials":
		os.Exit(nodeCredentialsMain(args))
	case "version", "--version", "-version":
		fmt.Println(version.Get().GitVersion)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "controlplane: unknown command %q\n\n%s", sub, usage)
		os.Exit(2)
	}
}
