//! `ckb-operator run`: the operator process.

/// Arguments of `ckb-operator run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Key Vault client settings.
    #[command(flatten)]
    pub keyvault: crate::keyvault::KeyVaultArgs,
    /// Controller settings.
    #[command(flatten)]
    pub controller: crate::controller::ControllerArgs,
    /// Webhook settings.
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
}

/// Runs the operator until it is told to stop.
pub async fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`run` is being built (issue 4)")
}
