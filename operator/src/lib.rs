//! ckb-operator: binds Azure Key Vault keys to the Kata agent policy of confidential pods on AKS.
//!
//! - [`policy`]: the pure core: the agent policy hash and the Key Vault release policy.
//! - [`keyvault`]: the Key Vault client (official SDK), credentials, per-vault rate limits.
//! - [`caches`]: what every replica caches from the API server (the controller and the webhook read it).
//! - [`controller`]: the reconcile loop that keeps each binding's key and release policy in step.
//! - [`webhook`]: the pure pod mutation, its TLS admission server and certificate management.
//! - [`rbac`]: every Kubernetes API call the operator makes (the chart's RBAC is checked against it).
//! - [`duration`]: the one parser of every duration flag.
//! - [`cli`]: the `ckb-operator` command line (`run`, `crd`, `hash`, `release-policy`, `render`).

pub mod caches;
pub mod cli;
pub mod controller;
pub mod duration;
pub mod keyvault;
pub mod policy;
pub mod rbac;
pub mod telemetry;
pub mod webhook;

pub use ckb_crds as crds;
