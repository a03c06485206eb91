//! End-to-end support for ckb-operator: a real local control plane (etcd, kube-apiserver,
//! kube-controller-manager built from Go modules) that the e2e tests and the demo run against.

pub mod cluster;
pub mod demo;
pub mod registry;
pub mod suite_env;
pub mod workload_identity;
