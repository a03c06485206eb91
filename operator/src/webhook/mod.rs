//! webhook (being built).

/// Webhook settings of `ckb-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {}
