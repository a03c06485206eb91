//! The self-managed certificates kept with the API server: the Secret (optimistic writes, the
//! loser of a race adopts the winner's material) and the webhook configuration's `caBundle`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use super::CertError;
use super::pki::{CertTimings, TlsMaterial, apply, plan};
use crate::webhook::server::WebhookState;

/// Where the self-managed certificates live and what they must name.
#[derive(Debug, Clone)]
pub struct SelfManaged {
    /// Namespace of the Secret (the operator's).
    pub namespace: String,
    /// Secret name.
    pub secret: String,
    /// MutatingWebhookConfiguration whose `caBundle` to keep.
    pub webhook_config: String,
    /// SANs of the serving certificate.
    pub hosts: Vec<String>,
    /// Lifetimes.
    pub timings: CertTimings,
    /// How often to re-check the Secret and the webhook configuration.
    pub check_interval: Duration,
}

/// Reads the Secret, applies [`plan`] and writes the result with optimistic concurrency; returns
/// the material now stored (ours, or a concurrent writer's).
pub async fn ensure_secret(
    client: &kube::Client,
    cfg: &SelfManaged,
) -> Result<TlsMaterial, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let existing = api.get_opt(&cfg.secret).await?;
        let material = existing
            .as_ref()
            .map(TlsMaterial::from_secret)
            .unwrap_or_default();
        let now = Timestamp::now();
        let steps = plan(&material, &cfg.hosts, now, &cfg.timings);
        if steps.is_empty() {
            return Ok(material);
        }
        tracing::info!(secret = %cfg.secret, ?steps, "updating webhook certificates");
        let next = apply(&material, &steps, &cfg.hosts, now, &cfg.timings)?;
        let pp = PostParams {
            field_manager: Some(crate::crds::FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        let result = match existing {
            Some(mut s) => {
                // The resourceVersion read above rides along: a concurrent write makes this 409.
                s.data = Some(next.to_data());
                s.string_data = None;
                api.replace(&cfg.secret, &pp, &s).await
            }
            None => {
                let s = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(cfg.secret.clone()),
                        namespace: Some(cfg.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_string(),
                            crate::crds::FIELD_MANAGER.to_string(),
                        )])),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".to_string()),
                    data: Some(next.to_data()),
                    ..Default::default()
                };
                api.create(&pp, &s).await
            }
        };
        match result {
            Ok(_) => return Ok(next),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!("webhook Secret changed concurrently; re-reading");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CertError::Conflicts(ATTEMPTS))
}

/// Makes every webhook of the named MutatingWebhookConfiguration trust `bundle_pem`. Returns how
/// many entries were patched (0 when all were right or the configuration does not exist yet).
pub async fn ensure_ca_bundle(
    client: &kube::Client,
    name: &str,
    bundle_pem: &str,
) -> Result<usize, CertError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mwc) = api.get_opt(name).await? else {
        tracing::warn!(
            name,
            "MutatingWebhookConfiguration not found; caBundle not written"
        );
        return Ok(0);
    };
    let want = ByteString(bundle_pem.as_bytes().to_vec());
    let stale: Vec<String> = mwc
        .webhooks
        .iter()
        .flatten()
        .filter(|w| w.client_config.ca_bundle.as_ref() != Some(&want))
        .map(|w| w.name.clone())
        .collect();
    if stale.is_empty() {
        return Ok(0);
    }
    // Strategic merge keyed by webhook name: touches caBundle only, whatever else the chart set.
    let patch = serde_json::json!({
        "webhooks": stale.iter().map(|n| serde_json::json!({
            "name": n,
            "clientConfig": {"caBundle": STANDARD.encode(bundle_pem.as_bytes())},
        })).collect::<Vec<_>>()
    });
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    tracing::info!(name, webhooks = ?stale, "caBundle updated");
    Ok(stale.len())
}

/// Gets a first certificate, retrying with backoff (not ready meanwhile).
pub async fn initial_self_managed(client: &kube::Client, cfg: &SelfManaged) -> TlsMaterial {
    let mut delay = Duration::from_millis(500);
    loop {
        match ensure_secret(client, cfg).await {
            Ok(m) => {
                if let Err(e) = ensure_ca_bundle(client, &cfg.webhook_config, &m.ca_bundle).await {
                    tracing::warn!(error = %e, "cannot write the caBundle yet");
                }
                return m;
            }
            Err(e) => tracing::warn!(error = %e, "cannot obtain webhook certificates yet"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Keeps the certificates fresh until `shutdown`: re-checks every `check_interval`, reloads `tls`
/// when the stored serving certificate changed (rotation by us or by the other replica).
pub async fn run_self_managed(
    client: kube::Client,
    cfg: SelfManaged,
    tls: RustlsConfig,
    state: WebhookState,
    mut loaded_crt: String,
    shutdown: CancellationToken,
) {
    while shutdown
        .run_until_cancelled(tokio::time::sleep(cfg.check_interval))
        .await
        .is_some()
    {
        match ensure_secret(&client, &cfg).await {
            Ok(m) => {
                if let Err(e) = ensure_ca_bundle(&client, &cfg.webhook_config, &m.ca_bundle).await {
                    tracing::warn!(error = %e, "cannot write the caBundle");
                }
                if m.tls_crt != loaded_crt {
                    match tls
                        .reload_from_pem(
                            m.tls_crt.clone().into_bytes(),
                            m.tls_key.clone().into_bytes(),
                        )
                        .await
                    {
                        Ok(()) => {
                            tracing::info!("serving certificate reloaded");
                            loaded_crt = m.tls_crt;
                            state.set_tls_loaded();
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot load the new serving certificate")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "certificate check failed; will retry"),
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
