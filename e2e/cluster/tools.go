//go:build tools

// Package cluster pins the Kubernetes commands the local control plane is built from; the build
// script runs `go build` on these import paths.
package cluster

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
