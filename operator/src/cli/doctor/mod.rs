//! `ckb-operator doctor`: every reason a pod (or a Deployment's pods) may not get its key, read
//! from the live cluster and said in plain language.
//!
//! ```text
//! ckb-operator doctor -n payments deployment/orders
//! ckb-operator doctor -n payments orders-7c9f8d-x2x1q
//! ```
//!
//! The checks (each can be left out with `--skip <name>`):
//!
//! | name | what must hold |
//! |---|---|
//! | `runtime-class` | the pod asks for a confidential runtime class, and that RuntimeClass exists |
//! | `namespace-opt-in` | the namespace is labelled `ckb.dev/injection: enabled` |
//! | `pod-security` | the namespace's Pod Security `enforce` level is `privileged` (or unset): `baseline` and `restricted` refuse the injected `hostPath` volume |
//! | `binding` | at least one ConfidentialKeyBinding of the namespace selects the pod |
//! | `binding-ready` | each selecting binding is `Ready` for its current generation |
//! | `webhook` | the webhook configuration exists, has a CA bundle, and its Service has ready endpoints (or its URL answers) |
//! | `injection` | the pod carries the `skr` sidecar for every selecting binding |
//! | `policy-hash` | the pod's agent-policy hash is one of each binding's bound hashes |
//! | `workload-identity-label` | the pod is labelled `azure.workload.identity/use: "true"` |
//! | `workload-identity-service-account` | its ServiceAccount carries `azure.workload.identity/client-id` |
//! | `workload-identity-env` | the workload-identity webhook gave the `skr` container its `AZURE_*` environment |
//!
//! The decision ([`diagnose`], in `checks.rs`) is a pure function of what was read ([`Facts`]);
//! [`gather`] (in `facts.rs`) reads.
//! Exit code 0 when nothing is wrong, 1 when a problem was found (or the cluster could not be read).

use anyhow::bail;

use crate::cli::{NamespaceArg, cluster};
use crate::webhook::RuntimeClassArgs;

mod checks;
mod facts;

pub use checks::{Finding, diagnose};
pub use facts::{Facts, WebhookState, gather};

/// The ServiceAccount annotation naming the workload identity's client id.
pub const WI_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// The environment the workload-identity webhook gives every container of a labelled pod.
pub const WI_ENV: [&str; 2] = ["AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"];
/// The Pod Security Admission label holding the enforced level.
pub const PSA_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Every check, in the order they are reported.
pub const CHECKS: [&str; 11] = [
    "runtime-class",
    "namespace-opt-in",
    "pod-security",
    "binding",
    "binding-ready",
    "webhook",
    "injection",
    "policy-hash",
    "workload-identity-label",
    "workload-identity-service-account",
    "workload-identity-env",
];

/// Arguments of `ckb-operator doctor`.
#[derive(Debug, clap::Args)]
#[command(
    mut_arg("namespace", |a| a.env("CKB_DOCTOR_NAMESPACE").help("Namespace of the target")),
    mut_arg("confidential_runtime_classes", |a| a
        .env("CKB_DOCTOR_CONFIDENTIAL_RUNTIME_CLASSES")
        .help("Runtime classes of confidential pods (as the operator is configured)"))
)]
pub struct DoctorArgs {
    /// What to examine: `<pod>`, `pod/<name>` or `deployment/<name>`.
    pub target: String,
    /// Namespace of the target.
    #[command(flatten)]
    pub namespace: NamespaceArg,
    /// Name of the operator's MutatingWebhookConfiguration (the chart's full name).
    #[arg(
        long = "webhook-configuration",
        env = "CKB_DOCTOR_WEBHOOK_CONFIGURATION",
        default_value = "ckb-operator"
    )]
    pub webhook_configuration: String,
    /// Runtime classes of confidential pods (as the operator is configured).
    #[command(flatten)]
    pub runtime: RuntimeClassArgs,
    /// Checks to leave out (the possible values below), e.g. `workload-identity-env`
    /// on a cluster without the workload-identity webhook.
    #[arg(long = "skip", env = "CKB_DOCTOR_SKIP", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(CHECKS))]
    pub skip: Vec<String>,
}

/// Prints the findings; the text a user reads.
pub fn report(target: &str, findings: &[Finding]) -> String {
    let problems = findings.iter().filter(|f| f.problem).count();
    let mut out = format!("{target}\n");
    for f in findings {
        out.push_str(&format!(
            "  {} [{}] {}\n",
            if f.problem { "PROBLEM" } else { "ok     " },
            f.check,
            f.message
        ));
    }
    if problems == 0 {
        out.push_str("Nothing is wrong: the pods can get their key.\n");
    } else {
        out.push_str(&format!(
            "{problems} problem(s) found: the pods may not get their key until each is fixed.\n"
        ));
    }
    out
}

/// `ckb-operator doctor`.
pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let client = cluster::client().await?;
    let facts = gather(&client, &args).await?;
    let findings = diagnose(&facts, &args.skip);
    print!("{}", report(&facts.target, &findings));
    let problems = findings.iter().filter(|f| f.problem).count();
    if problems > 0 {
        bail!("{problems} problem(s) found for {}", facts.target);
    }
    Ok(())
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod checks_tests;
