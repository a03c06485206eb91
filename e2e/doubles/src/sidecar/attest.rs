//! The attestation step: a token from the attestation double that carries the runtime key.

use serde_json::Value;

use super::keys::RuntimeKey;
use super::{SidecarError, post_json};
use crate::attestation::TokenRequest;

/// Gets a token from the attestation double's test endpoint (`POST /_double/token`) on
/// `maa_url` (`https://<maa host>[:port]`), for `req` with the runtime key's JWKS filled in.
pub async fn attest(
    client: &reqwest::Client,
    maa_url: &str,
    runtime: &RuntimeKey,
    mut req: TokenRequest,
) -> Result<String, SidecarError> {
    req.runtime = runtime.jwks();
    let url = format!("{}/_double/token", maa_url.trim_end_matches('/'));
    let body: Value = post_json(
        client,
        &url,
        None,
        &req,
        reqwest::Response::json::<Value>,
        Value::to_string,
    )
    .await?;
    body.get("token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| SidecarError::Invalid("attestation answer without token".into()))
}
