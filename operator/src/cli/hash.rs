//! `ckb-operator hash`: the hostdata value of an agent policy.

/// Arguments of `ckb-operator hash`.
#[derive(Debug, clap::Args)]
pub struct HashArgs {
    /// Policy file (Rego text), or `-` for standard input.
    #[arg(default_value = "-", env = "CKB_HASH_FILE")]
    pub file: String,
    /// The input is the base64 annotation value, not the Rego text.
    #[arg(long, env = "CKB_HASH_ANNOTATION")]
    pub annotation: bool,
}

/// Runs the subcommand.
pub fn run(_args: HashArgs) -> anyhow::Result<()> {
    anyhow::bail!("`hash` is being built (issue 2)")
}
