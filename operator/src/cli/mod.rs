//! The `ckb-operator` command line. Every flag has a `CKB_*` environment fallback.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod cluster;
pub mod crd;
pub mod doctor;
pub mod hash;
pub mod release_policy;
pub mod render;
pub mod run;

/// Binds Azure Key Vault keys to confidential pods on AKS.
#[derive(Debug, Parser)]
#[command(name = "ckb-operator", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: controller (on the leader) and admission webhook (on every replica).
    Run(Box<run::RunArgs>),
    /// Print the ConfidentialKeyBinding CustomResourceDefinition as YAML.
    Crd(crd::CrdArgs),
    /// Print the hostdata value (SHA-256, lowercase hex) of an agent policy.
    Hash(hash::HashArgs),
    /// Print the release policy a binding would set on its key.
    ReleasePolicy(release_policy::ReleasePolicyArgs),
    /// Print workloads as the webhook will make their pods (minus the policy), for genpolicy.
    Render(render::RenderArgs),
    /// Say every reason a pod (or a Deployment's pods) may not get its key, from the live cluster.
    Doctor(doctor::DoctorArgs),
}

/// Entry point of the binary: parse, run, map errors to stderr and a non-zero exit.
pub fn main() -> ExitCode {
    // NB: one rustls provider for the whole process (kube and the Azure SDK both use aws-lc-rs);
    // installing it first avoids the "no process-level CryptoProvider" panic at client creation.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ckb-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Crd(args) => crd::run(args),
            Command::Hash(args) => hash::run(args),
            Command::ReleasePolicy(args) => release_policy::run(args),
            Command::Render(args) => render::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ckb-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}
