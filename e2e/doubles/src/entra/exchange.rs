//! The client-credentials exchange with a federated assertion, checked in Entra's order: the
//! tenant, the protocol parameters, the application, then the assertion (issuer, signature,
//! validity window, audience, subject); on success an access token signed by the double.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::assertion::{AssertionClaims, read_claims, verify_signature};
use super::{
    ASSERTION_TYPE, AUTHORITY_HOST, Entra, EntraConfig, EntraError, FederatedCredential,
    SIGNING_KID, lock, random_uuid,
};
use crate::jose::b64url;

/// The parameters of a well-formed client-credentials request.
struct Request<'a> {
    client_id: &'a str,
    /// The scope without `/.default`.
    resource: &'a str,
    assertion: &'a str,
}

impl Entra {
    /// The access token's id and the answer's body, or the refusal.
    pub(super) fn exchange(
        &self,
        tenant: &str,
        params: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<(String, Value), EntraError> {
        let config = lock(&self.config).clone();
        if tenant != config.tenant {
            return Err(EntraError::new(
                400,
                "invalid_request",
                90002,
                format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."
                ),
            ));
        }
        let request = read_request(params)?;
        check_assertion(&config, &request, now)?;
        self.issue(&config, &request, now)
    }

    /// An access token for the request's application and resource.
    fn issue(
        &self,
        config: &EntraConfig,
        request: &Request<'_>,
        now: i64,
    ) -> Result<(String, Value), EntraError> {
        let lifetime = config.token_lifetime.as_secs() as i64;
        let token_id = b64url(&rand::random::<[u8; 16]>());
        let object_id = random_uuid();
        let payload = json!({
            "aud": request.resource,
            "iss": format!("https://{AUTHORITY_HOST}/{}/v2.0", config.tenant),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": request.client_id,
            "azp": request.client_id,
            "oid": object_id,
            "sub": object_id,
            "tid": config.tenant,
            "uti": token_id,
            "ver": "2.0",
        });
        let token = self
            .signer
            .sign_compact(
                json!({"typ": "JWT", "kid": SIGNING_KID}),
                payload.to_string().as_bytes(),
            )
            .map_err(|e| EntraError::new(500, "server_error", 50000, e.to_string()))?;
        Ok((
            token_id,
            json!({
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }),
        ))
    }
}

/// The protocol checks: grant type, client id, a `.default` scope, a JWT-bearer assertion.
fn read_request(params: &BTreeMap<String, String>) -> Result<Request<'_>, EntraError> {
    let param = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let missing = |name: &str| {
        EntraError::new(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    match param("grant_type") {
        Some("client_credentials") => {}
        None => return Err(missing("grant_type")),
        Some(other) => {
            return Err(EntraError::new(
                400,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{other}'."),
            ));
        }
    }
    let client_id = param("client_id").ok_or_else(|| missing("client_id"))?;
    let scope = param("scope").ok_or_else(|| missing("scope"))?;
    let Some(resource) = scope.strip_suffix("/.default").filter(|r| !r.is_empty()) else {
        return Err(EntraError::new(
            400,
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid: a client-credentials request asks for '<resource>/.default'."
            ),
        ));
    };
    let assertion = match (param("client_assertion_type"), param("client_assertion")) {
        (Some(ASSERTION_TYPE), Some(a)) => a,
        _ => {
            return Err(EntraError::invalid_client(
                7000218,
                format!(
                    "The request body must contain the following parameter: 'client_assertion' with client_assertion_type '{ASSERTION_TYPE}'."
                ),
            ));
        }
    };
    Ok(Request {
        client_id,
        resource,
        assertion,
    })
}

/// The application must exist, and one of its federated credentials must match the assertion's
/// issuer (trusted, and whose key signed it), audience and subject; the assertion must be
/// within its validity window.
fn check_assertion(
    config: &EntraConfig,
    request: &Request<'_>,
    now: i64,
) -> Result<(), EntraError> {
    let client_id = request.client_id;
    let creds: Vec<&FederatedCredential> = config
        .credentials
        .iter()
        .filter(|c| c.client_id == client_id)
        .collect();
    if creds.is_empty() {
        return Err(EntraError::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'.",
                config.tenant
            ),
        ));
    }
    let claims = read_claims(request.assertion).map_err(|e| {
        EntraError::invalid_client(50013, format!("Assertion is not a valid JWT: {e}."))
    })?;
    let iss = claims.iss.clone().unwrap_or_default();
    let creds: Vec<&FederatedCredential> = creds.into_iter().filter(|c| c.issuer == iss).collect();
    let trusted = config.issuers.iter().find(|i| i.issuer == iss);
    let (Some(trusted), false) = (trusted, creds.is_empty()) else {
        return Err(EntraError::invalid_client(
            700211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'."
            ),
        ));
    };
    verify_signature(request.assertion, &trusted.public_key_pem).map_err(|e| {
        EntraError::invalid_client(
            50013,
            format!("Assertion failed signature validation: {e}."),
        )
    })?;
    check_validity(config, &claims, now)?;
    let creds: Vec<&FederatedCredential> = creds
        .into_iter()
        .filter(|c| claims.aud.contains(&c.audience))
        .collect();
    if creds.is_empty() {
        return Err(EntraError::invalid_client(
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'.",
                claims.aud.join(",")
            ),
        ));
    }
    let sub = claims.sub.clone().unwrap_or_default();
    if !creds.iter().any(|c| c.subject == sub) {
        return Err(EntraError::invalid_client(
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. Matching is exact and case-sensitive."
            ),
        ));
    }
    Ok(())
}

/// `nbf` (or `iat`) and `exp`, with the configured clock skew.
fn check_validity(
    config: &EntraConfig,
    claims: &AssertionClaims,
    now: i64,
) -> Result<(), EntraError> {
    let skew = config.clock_skew.as_secs() as i64;
    let exp = claims.exp.unwrap_or(i64::MIN);
    let nbf = claims.nbf.or(claims.iat).unwrap_or(i64::MIN);
    if now > exp + skew || now + skew < nbf {
        return Err(EntraError::invalid_client(
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}."
            ),
        ));
    }
    Ok(())
}
