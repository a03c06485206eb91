//! The cluster as the command-line tools (`doctor`, `render --from-cluster`) read it: one client
//! from the current kubeconfig context, and the bindings of some namespaces.

use std::sync::Arc;

use anyhow::Context as _;
use ckb_crds::ConfidentialKeyBinding;
use kube::api::ListParams;
use kube::{Api, Client};

/// A client for the current kubeconfig context (or the in-cluster ServiceAccount).
pub async fn client() -> anyhow::Result<Client> {
    Client::try_default()
        .await
        .context("cannot reach the cluster (kubeconfig)")
}

/// Every ConfidentialKeyBinding of `namespaces`.
pub async fn bindings(
    client: &Client,
    namespaces: &[String],
) -> anyhow::Result<Vec<Arc<ConfidentialKeyBinding>>> {
    let mut out = Vec::new();
    for ns in namespaces {
        let api: Api<ConfidentialKeyBinding> = Api::namespaced(client.clone(), ns);
        let list = api.list(&ListParams::default()).await.with_context(|| {
            format!("listing the ConfidentialKeyBindings of {ns} (is the CRD installed?)")
        })?;
        out.extend(list.items.into_iter().map(Arc::new));
    }
    Ok(out)
}
