//! `ckb-operator release-policy`: the release policy a binding would set on its key.

/// Arguments of `ckb-operator release-policy`.
#[derive(Debug, clap::Args)]
pub struct ReleasePolicyArgs {
    /// Binding manifest (YAML), or `-` for standard input.
    #[arg(short = 'f', long = "file", env = "CKB_RELEASE_POLICY_FILE")]
    pub file: String,
}

/// Runs the subcommand.
pub fn run(_args: ReleasePolicyArgs) -> anyhow::Result<()> {
    anyhow::bail!("`release-policy` is being built (issue 2)")
}
