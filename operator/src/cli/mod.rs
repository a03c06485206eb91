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

/// The `-n/--namespace` option of `render` and `doctor`: the namespace of what they read when it
/// names none. Spelled once here and flattened by both; each sets its own `CKB_<COMMAND>_NAMESPACE`
/// fallback and help with `mut_arg` on the `namespace` argument.
#[derive(Debug, Clone, clap::Args)]
pub struct NamespaceArg {
    /// The namespace.
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
}

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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `-n/--namespace` is one flattened argument, but each command keeps its own fallback.
    #[test]
    fn each_command_keeps_its_own_namespace_environment_variable() {
        let cli = Cli::command();
        for (command, env) in [
            ("doctor", "CKB_DOCTOR_NAMESPACE"),
            ("render", "CKB_RENDER_NAMESPACE"),
        ] {
            let sub = cli.find_subcommand(command).expect(command);
            let arg = sub
                .get_arguments()
                .find(|a| a.get_id() == "namespace")
                .expect("namespace");
            assert_eq!(arg.get_short(), Some('n'), "{command}");
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(env),
                "{command}"
            );
            assert_eq!(
                arg.get_default_values()
                    .iter()
                    .map(|v| v.to_str())
                    .collect::<Vec<_>>(),
                [Some("default")],
                "{command}"
            );
        }
    }
}
