//! The release call and what the sidecar does with its answer: the JWS checked against its
//! `x5c` chain and the vault's host name, then the wrapped key opened with the runtime key.

use serde_json::{Value, json};

use super::chain::{Trust, verify_chain};
use super::keys::{ReleasedKey, RuntimeKey};
use super::{SidecarError, post_json};
use crate::jose::{CompactJws, b64std_decode, b64url_decode};

/// One release call.
#[derive(Debug, Clone)]
pub struct ReleaseCall<'a> {
    /// `https://<vault host>[:port]` (the port only when not reached through a resolver).
    pub vault_url: &'a str,
    /// Key name (the sidecar's `kid`).
    pub key_name: &'a str,
    /// Version (the sidecar sends none).
    pub version: Option<&'a str>,
    /// Bearer token for Key Vault.
    pub bearer: &'a str,
    /// The attestation token.
    pub token: &'a str,
    /// API version (the sidecar uses 7.4).
    pub api_version: &'a str,
    /// Requested `enc` (the sidecar sends none).
    pub enc: Option<&'a str>,
}

impl ReleaseCall<'_> {
    /// `POST` target: the key's (or the version's) `release` action.
    fn url(&self, base: &str) -> String {
        match self.version {
            Some(v) => format!(
                "{base}/keys/{}/{v}/release?api-version={}",
                self.key_name, self.api_version
            ),
            None => format!(
                "{base}/keys/{}/release?api-version={}",
                self.key_name, self.api_version
            ),
        }
    }

    /// The request body: the attestation token as `target`, and `enc` when one is requested.
    fn body(&self) -> Value {
        let mut body = json!({ "target": self.token });
        if let Some(enc) = self.enc {
            body["enc"] = enc.into();
        }
        body
    }
}

/// Calls release and does what the sidecar does with the answer.
pub async fn release_key(
    client: &reqwest::Client,
    call: &ReleaseCall<'_>,
    runtime: &RuntimeKey,
    trust: &Trust,
) -> Result<ReleasedKey, SidecarError> {
    let base = call.vault_url.trim_end_matches('/');
    let url = call.url(base);
    let text = post_json(
        client,
        &url,
        Some(call.bearer),
        &call.body(),
        reqwest::Response::text,
        String::clone,
    )
    .await?;
    let answer: Value = serde_json::from_str(&text)
        .map_err(|e| SidecarError::Invalid(format!("body is not JSON: {e}")))?;
    let value = answer
        .get("value")
        .and_then(Value::as_str)
        .ok_or_else(|| SidecarError::Invalid("no \"value\"".into()))?;
    let vault_host = reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .ok_or_else(|| SidecarError::Invalid(format!("vault URL {base}")))?;
    open_release(value, &vault_host, runtime, trust)
}

/// Verifies a release JWS as the sidecar does and unwraps the key.
pub fn open_release(
    jws_text: &str,
    vault_host: &str,
    runtime: &RuntimeKey,
    trust: &Trust,
) -> Result<ReleasedKey, SidecarError> {
    let payload = verified_payload(jws_text, vault_host, trust)?;
    let enc = payload
        .pointer("/request/enc")
        .and_then(Value::as_str)
        .ok_or_else(|| SidecarError::Invalid("payload without request.enc".into()))?
        .to_owned();
    let key = payload
        .pointer("/response/key/key")
        .ok_or_else(|| SidecarError::Invalid("payload without response.key.key".into()))?;
    let key_bytes = runtime.unwrap(&enc, &wrapped_key(key)?)?;
    let str_field = |f: &str| {
        key.get(f)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(ReleasedKey {
        kid: str_field("kid"),
        kty: str_field("kty"),
        key_ops: key
            .get("key_ops")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| o.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        enc,
        key_bytes,
        payload,
    })
}

/// The JWS payload, once its signature checks with `x5c[0]` and the chain is trusted for
/// `vault_host`.
fn verified_payload(
    jws_text: &str,
    vault_host: &str,
    trust: &Trust,
) -> Result<Value, SidecarError> {
    let jws = CompactJws::parse(jws_text).map_err(|e| SidecarError::Invalid(e.to_string()))?;
    let x5c: Vec<Vec<u8>> = jws
        .header
        .get("x5c")
        .and_then(Value::as_array)
        .ok_or_else(|| SidecarError::Invalid("header without x5c".into()))?
        .iter()
        .map(|c| c.as_str().and_then(b64std_decode))
        .collect::<Option<_>>()
        .ok_or_else(|| SidecarError::Invalid("x5c entries must be standard base64".into()))?;
    let leaf = x5c
        .first()
        .ok_or_else(|| SidecarError::Invalid("empty x5c".into()))?;
    jws.verify_with_certificate(leaf)
        .map_err(|e| SidecarError::Invalid(format!("JWS signature: {e}")))?;
    verify_chain(&x5c, vault_host, trust)?;
    serde_json::from_slice(&jws.payload).map_err(|e| SidecarError::Invalid(format!("payload: {e}")))
}

/// The ciphertext of the released key: `key_hsm`, base64url JSON, holds it as base64url.
fn wrapped_key(key: &Value) -> Result<Vec<u8>, SidecarError> {
    let key_hsm = key
        .get("key_hsm")
        .and_then(Value::as_str)
        .and_then(b64url_decode)
        .ok_or_else(|| SidecarError::Invalid("key_hsm is not base64url".into()))?;
    let key_hsm: Value = serde_json::from_slice(&key_hsm)
        .map_err(|e| SidecarError::Invalid(format!("key_hsm: {e}")))?;
    key_hsm
        .get("ciphertext")
        .and_then(Value::as_str)
        .and_then(b64url_decode)
        .ok_or_else(|| SidecarError::Invalid("key_hsm.ciphertext is not base64url".into()))
}
