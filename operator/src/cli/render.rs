//! `ckb-operator render`: workloads as the webhook will make their pods, for genpolicy.

/// Arguments of `ckb-operator render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Workload manifests (YAML), or `-` for standard input.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "-",
        env = "CKB_RENDER_FILE"
    )]
    pub file: String,
}

/// Runs the subcommand.
pub async fn run(_args: RenderArgs) -> anyhow::Result<()> {
    anyhow::bail!("`render` is being built (issue 5)")
}
