//! controller (being built).

/// Controller settings of `ckb-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {}
