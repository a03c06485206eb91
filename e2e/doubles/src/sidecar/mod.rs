//! Plays the SKR sidecar's part of a key release, so tests and the demo can prove a binding end
//! to end: a fresh RSA-2048 runtime key, an attestation token that carries it (and the pod's
//! policy hash as hostdata), `POST /keys/{name}/release`, then the checks and the unwrap the real
//! sidecar does (confidential-sidecar-containers `pkg/common/akv.go`, `pkg/skr/skr.go`):
//! the JWS signature with `x5c[0]`, the chain to a trusted root with the vault's host name, then
//! RSA-OAEP (hash by `request.enc`) of the AES key and AES-KWP (RFC 5649) of the key bytes.
//!
//! The unwrap uses the `rsa` and `aes-kw` crates, not the aws-lc-rs code the Key Vault double
//! wraps with, so the two sides check each other.

mod attest;
mod chain;
mod keys;
mod release;

use serde::Serialize;

pub use attest::attest;
pub use chain::Trust;
pub use keys::{ReleasedKey, RuntimeKey};
pub use release::{ReleaseCall, open_release, release_key};

use crate::attestation::TokenRequest;

/// Why a release failed, from the sidecar's point of view.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The vault (or the attestation double) refused, with its status and body.
    #[error("{status} from {url}: {body}")]
    Refused {
        /// URL called.
        url: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// Transport failure.
    #[error("calling {0}: {1}")]
    Http(String, #[source] reqwest::Error),
    /// The answer is not what the sidecar accepts.
    #[error("invalid release answer: {0}")]
    Invalid(String),
    /// Crypto failure (key generation, unwrap).
    #[error("crypto: {0}")]
    Crypto(String),
}

/// POSTs `body` as JSON to `url` (with `bearer` as the bearer token when one is given) and reads
/// the whole answer with `read`; an answer other than 200 is a refusal carrying the body as
/// `shown` renders it.
async fn post_json<B, T, R>(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    body: &B,
    read: impl FnOnce(reqwest::Response) -> R,
    shown: impl FnOnce(&T) -> String,
) -> Result<T, SidecarError>
where
    B: Serialize + ?Sized,
    R: Future<Output = reqwest::Result<T>>,
{
    let mut request = client.post(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let resp = request
        .json(body)
        .send()
        .await
        .map_err(|e| SidecarError::Http(url.to_owned(), e))?;
    let status = resp.status().as_u16();
    let answer = read(resp)
        .await
        .map_err(|e| SidecarError::Http(url.to_owned(), e))?;
    if status != 200 {
        return Err(SidecarError::Refused {
            url: url.to_owned(),
            status,
            body: shown(&answer),
        });
    }
    Ok(answer)
}

/// The whole sidecar flow for a pod whose policy hashes to `hostdata`: runtime key, token from
/// the attestation double at `maa_url` (issuer `https://<maa_host>`), release from the vault.
/// `call.token` is ignored: the token is the one just obtained.
pub async fn release_for_pod(
    client: &reqwest::Client,
    call: &ReleaseCall<'_>,
    maa_url: &str,
    maa_host: &str,
    hostdata: &str,
    trust: &Trust,
) -> Result<ReleasedKey, SidecarError> {
    let runtime = RuntimeKey::generate()?;
    let req = TokenRequest {
        issuer_host: maa_host.to_owned(),
        hostdata: hostdata.to_owned(),
        ..TokenRequest::default()
    };
    let token = attest(client, maa_url, &runtime, req).await?;
    release_key(
        client,
        &ReleaseCall {
            token: &token,
            ..call.clone()
        },
        &runtime,
        trust,
    )
    .await
}
