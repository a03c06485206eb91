//! What the Key Vault double holds, and the SKR sidecar played against it for a pod.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow, bail};
use ckb_doubles::TokenRequest;
use ckb_doubles::sidecar::{self, ReleaseCall, ReleasedKey, RuntimeKey, SidecarError, Trust};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::{DEMO_AUTHORITY, Environment, RELEASE_KV_TOKEN};

/// Bearer token with every permission of the Key Vault double (someone with Key Vault rights).
pub const VAULT_ADMIN_KV_TOKEN: &str = "admin-token";

impl Environment {
    /// The double's state of `vault_host` (keys and soft-deleted keys), if the vault was touched.
    pub fn vault_state(&self, vault_host: &str) -> Option<Value> {
        self.double.keys().get(vault_host).cloned()
    }

    /// The latest version of a key in the double (its bundle plus `release_policy_json`), if any.
    pub fn key(&self, vault_host: &str, name: &str) -> Option<Value> {
        self.vault_state(vault_host)?
            .pointer(&format!("/keys/{name}"))?
            .as_array()?
            .last()
            .cloned()
    }

    /// Whether the double holds `name` soft-deleted in `vault_host`.
    pub fn key_soft_deleted(&self, vault_host: &str, name: &str) -> bool {
        self.vault_state(vault_host)
            .and_then(|v| v.pointer(&format!("/deleted/{name}")).cloned())
            .is_some()
    }

    /// The number of versions of a key in the double.
    pub fn key_versions(&self, vault_host: &str, name: &str) -> usize {
        self.vault_state(vault_host)
            .and_then(|v| v.pointer(&format!("/keys/{name}")).cloned())
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// Creates an exportable RSA-HSM 2048 key `name` in the double's `vault_host` directly, as
    /// someone with Key Vault rights would (not through the operator), tagged with `tags` and
    /// releasable to `hostdata` under [`DEMO_AUTHORITY`]; returns the double's answer (the key
    /// bundle).
    pub async fn create_key_as_vault_admin(
        &self,
        vault_host: &str,
        name: &str,
        tags: Value,
        hostdata: &str,
    ) -> Result<Value> {
        let policy = json!({"version": "1.0.0", "anyOf": [{"authority": DEMO_AUTHORITY, "allOf": [
            {"claim": "x-ms-sevsnpvm-hostdata", "equals": hostdata}]}]});
        let body = json!({
            "kty": "RSA-HSM",
            "key_size": 2048,
            "key_ops": ["wrapKey", "unwrapKey"],
            "attributes": {"exportable": true},
            "release_policy": {
                "contentType": "application/json; charset=utf-8",
                "data": ckb_doubles::jose::b64url(policy.to_string().as_bytes()),
            },
            "tags": tags,
        });
        let url = format!(
            "{}/keys/{name}/create?api-version=7.4",
            self.double_url(vault_host)
        );
        let resp = self
            .double_client(&[vault_host])
            .post(url)
            .bearer_auth(VAULT_ADMIN_KV_TOKEN)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let answer: Value = resp.json().await?;
        if !status.is_success() {
            bail!("creating {name} in the double: {status} {answer}");
        }
        Ok(answer)
    }

    /// Plays the SKR sidecar of `pod` as the real one would: vault, key and authority from the
    /// pod's injected env, hostdata = SHA-256 of the pod's agent-policy annotation; gets a token
    /// from the attestation double (adjusted by `tweak`), releases and unwraps the key.
    pub async fn release_for_pod(
        &self,
        pod: &Pod,
        tweak: impl FnOnce(&mut TokenRequest),
    ) -> Result<std::result::Result<ReleasedKey, SidecarError>> {
        let env = app_env(pod);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .ok_or_else(|| anyhow!("pod has no {k} env"))
        };
        let vault_host = get("SKR_AKV_ENDPOINT")?;
        let maa_host = get("SKR_MAA_ENDPOINT")?;
        let key_name = get("SKR_KEY_NAME")?;
        let annotation = pod_annotation(pod, ckb_crds::labels::AGENT_POLICY)
            .ok_or_else(|| anyhow!("pod has no agent policy annotation"))?;
        let hostdata = hostdata_of_annotation(annotation)?;
        let mut req = TokenRequest {
            issuer_host: maa_host.clone(),
            hostdata,
            ..TokenRequest::default()
        };
        tweak(&mut req);
        let maa_host_for_url = req.issuer_host.clone();
        let client = self.double_client(&[&vault_host, &maa_host_for_url]);
        let runtime = RuntimeKey::generate()?;
        let token =
            sidecar::attest(&client, &self.double_url(&maa_host_for_url), &runtime, req).await?;
        let vault_url = self.double_url(&vault_host);
        let call = ReleaseCall {
            vault_url: &vault_url,
            key_name: &key_name,
            version: None,
            bearer: RELEASE_KV_TOKEN,
            token: &token,
            api_version: "7.4",
            enc: None,
        };
        let trust = Trust {
            roots: vec![self.double.ca_der()],
        };
        Ok(sidecar::release_key(&client, &call, &runtime, &trust).await)
    }
}

/// The `x-ms-sevsnpvm-hostdata` the confidential VM of a pod with this agent-policy annotation
/// reports: the lowercase hex SHA-256 of the annotation's decoded bytes, computed here with `sha2`
/// and `base64` rather than the operator's own functions, so that a wrong definition shared by
/// the webhook and the controller does not pass.
pub fn hostdata_of_annotation(annotation: &str) -> Result<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let rego = base64::engine::general_purpose::STANDARD
        .decode(annotation)
        .context("the agent policy annotation is not standard base64")?;
    Ok(hex::encode(sha2::Sha256::digest(&rego)))
}

/// The pod's annotation `key`, if it has one.
pub fn pod_annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The env of the pod's first app container (not the `skr` sidecar), by name.
pub fn app_env(pod: &Pod) -> BTreeMap<String, String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name != "skr"))
        .and_then(|c| c.env.as_ref())
        .map(|env| {
            env.iter()
                .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
}
