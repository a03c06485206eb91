//! Between the SDK and our types: its errors mapped to [`KeyVaultError`], our [`NewKey`] to its
//! create parameters, its key bundles to [`VaultKey`].

use std::collections::HashMap;
use std::time::SystemTime;

use azure_security_keyvault_keys::models::{
    CreateKeyParameters, CurveName, DeletedKey, Key, KeyAttributes, KeyOperation, KeyReleasePolicy,
    KeyType,
};
use base64::Engine as _;

use super::{Op, POLICY_CONTENT_TYPE};
use crate::keyvault::credential;
use crate::keyvault::errors::{self, CallKind, HttpFailure, TransportFailure};
use crate::keyvault::{DeletedVaultKey, KeyVaultError, NewKey, StoredReleasePolicy, VaultKey};

pub(super) fn unexpected_answer(op: Op, detail: String) -> KeyVaultError {
    // The service answered 2xx with something we cannot read: a write may have been applied.
    KeyVaultError::Transient {
        message: format!("unexpected answer to {}: {detail}", op.label()),
        outcome_unknown: op.kind() != CallKind::Read,
    }
}

/// Maps an SDK error (HTTP answer or transport failure).
pub(super) fn map_sdk_error(error: &azure_core::Error, kind: CallKind) -> KeyVaultError {
    use azure_core::error::ErrorKind;
    match error.kind() {
        ErrorKind::HttpResponse {
            status,
            raw_response,
            ..
        } => {
            let status = u16::from(*status);
            let failure = match raw_response {
                Some(raw) => {
                    let headers = raw.headers();
                    let retry_after = errors::retry_after(
                        |name| {
                            headers
                                .iter()
                                .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
                                .map(|(_, v)| v.as_str())
                        },
                        SystemTime::now(),
                    );
                    HttpFailure::from_parts(status, raw.body().as_ref(), retry_after)
                }
                None => HttpFailure {
                    status,
                    message: error.to_string(),
                    ..Default::default()
                },
            };
            errors::classify_http(&failure, kind)
        }
        ErrorKind::Connection => {
            errors::classify_transport(TransportFailure::Connect, kind, error_chain(error))
        }
        ErrorKind::Io => {
            errors::classify_transport(TransportFailure::AfterSend, kind, error_chain(error))
        }
        // Entra ID refused the identity (its federation or application is wrong): a refusal
        // naming the identity (see credential.rs), not an outage.
        ErrorKind::Credential if credential::entra_refusal_status(error).is_some() => {
            KeyVaultError::Forbidden {
                status: credential::entra_refusal_status(error).unwrap_or(401),
                message: error_chain(error),
            }
        }
        // No token: nothing was sent. Often passing (IMDS or the token endpoint not ready yet), so
        // retryable; the message says which credential failed.
        ErrorKind::Credential => KeyVaultError::Transient {
            message: format!(
                "could not get a token for Key Vault: {}",
                error_chain(error)
            ),
            outcome_unknown: false,
        },
        // Challenge refused (wrong resource), bad URL, unreadable request: will not pass as is.
        _ => KeyVaultError::InvalidRequest {
            message: error_chain(error),
        },
    }
}

/// The error and its sources, `a: b: c`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

pub(super) fn create_parameters(key: &NewKey) -> CreateKeyParameters {
    let kty: KeyType = key
        .kty
        .parse()
        .unwrap_or(KeyType::UnknownValue(key.kty.clone()));
    let is_ec = matches!(kty, KeyType::Ec | KeyType::EcHsm);
    CreateKeyParameters {
        kty: Some(kty),
        key_size: if is_ec {
            None
        } else {
            key.size.map(|s| s as i32)
        },
        curve: key
            .curve
            .as_ref()
            .map(|c| c.parse().unwrap_or(CurveName::UnknownValue(c.clone()))),
        key_ops: Some(
            key.key_ops
                .iter()
                .map(|o| o.parse().unwrap_or(KeyOperation::UnknownValue(o.clone())))
                .collect(),
        ),
        key_attributes: Some(KeyAttributes {
            enabled: Some(true),
            exportable: key.exportable.then_some(true),
            ..Default::default()
        }),
        release_policy: key
            .release_policy_json
            .as_ref()
            .map(|json| KeyReleasePolicy {
                content_type: Some(POLICY_CONTENT_TYPE.into()),
                encoded_policy: Some(json.as_bytes().to_vec()),
                immutable: Some(false),
            }),
        tags: Some(
            key.tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// `https://<vault>/keys/<name>/<version>` -> (name, version).
pub(super) fn name_and_version(kid: &str) -> Result<(String, String), String> {
    let path = kid
        .strip_prefix("https://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, path)| path)
        .ok_or_else(|| format!("key id {kid:?} is not https://<vault>/keys/<name>/<version>"))?;
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("keys"), Some(name), Some(version), None) => {
            Ok((name.to_owned(), version.to_owned()))
        }
        _ => Err(format!(
            "key id {kid:?} is not https://<vault>/keys/<name>/<version>"
        )),
    }
}

pub(super) fn release_policy(
    policy: Option<KeyReleasePolicy>,
) -> Result<Option<StoredReleasePolicy>, String> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    let Some(data) = policy.encoded_policy else {
        return Ok(None);
    };
    // The SDK has already decoded base64url; what is left must be the UTF-8 policy document.
    let json =
        String::from_utf8(data).map_err(|e| format!("release policy is not UTF-8 text: {e}"))?;
    Ok(Some(StoredReleasePolicy {
        content_type: policy.content_type,
        json,
        immutable: policy.immutable.unwrap_or(false),
    }))
}

/// Size in bits of an RSA modulus (leading zero bytes are not part of it).
pub(super) fn rsa_bits(n: &[u8]) -> Option<u32> {
    let first = n.iter().position(|&b| b != 0)?;
    let significant = &n[first..];
    Some((significant.len() as u32 - 1) * 8 + (8 - significant[0].leading_zeros()))
}

pub(super) struct KeyParts {
    jwk: Option<azure_security_keyvault_keys::models::JsonWebKey>,
    attributes: Option<KeyAttributes>,
    tags: Option<HashMap<String, String>>,
    release_policy: Option<KeyReleasePolicy>,
    managed: Option<bool>,
}

pub(super) fn to_vault_key(parts: KeyParts) -> Result<VaultKey, String> {
    let jwk = parts.jwk.ok_or("the answer has no key")?;
    let id = jwk.kid.clone().ok_or("the key has no kid")?;
    let (name, version) = name_and_version(&id)?;
    let kty = jwk.kty.as_ref().map(|k| k.to_string()).unwrap_or_default();
    let size = match (&jwk.n, &jwk.k) {
        (Some(n), _) => rsa_bits(n),
        (None, Some(k)) if !k.is_empty() => Some(k.len() as u32 * 8),
        _ => None,
    };
    let attributes = parts.attributes.unwrap_or_default();
    Ok(VaultKey {
        id,
        name,
        version,
        kty,
        size,
        curve: jwk.crv.as_ref().map(|c| c.to_string()),
        key_ops: jwk.key_ops.clone().unwrap_or_default(),
        exportable: attributes.exportable.unwrap_or(false),
        // Key Vault always reports `enabled`; its default on create is true.
        enabled: attributes.enabled.unwrap_or(true),
        tags: parts.tags.unwrap_or_default().into_iter().collect(),
        release_policy: release_policy(parts.release_policy)?,
        managed: parts.managed.unwrap_or(false),
    })
}

pub(super) fn vault_key(key: Key) -> Result<VaultKey, String> {
    to_vault_key(KeyParts {
        jwk: key.key,
        attributes: key.attributes,
        tags: key.tags,
        release_policy: key.release_policy,
        managed: key.managed,
    })
}

pub(super) fn deleted_vault_key(key: DeletedKey) -> Result<DeletedVaultKey, String> {
    Ok(DeletedVaultKey {
        recovery_id: key.recovery_id.clone(),
        deleted_date: key.deleted_date.map(|t| t.unix_timestamp()),
        scheduled_purge_date: key.scheduled_purge_date.map(|t| t.unix_timestamp()),
        key: to_vault_key(KeyParts {
            jwk: key.key,
            attributes: key.attributes,
            tags: key.tags,
            release_policy: key.release_policy,
            managed: key.managed,
        })?,
    })
}

/// Unpadded base64url, as Key Vault writes release policies (for tests and logs).
pub fn base64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}
