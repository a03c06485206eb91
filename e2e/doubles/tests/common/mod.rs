//! Shared setup of the integration tests: a double on loopback and a client that reaches the
//! Azure host names at it and trusts its CA.
#![allow(dead_code)]

use ckb_doubles::{Config, KeyVaultDouble};
use serde_json::{Value, json};

pub const VAULT: &str = "demo.vault.azure.net";
pub const OTHER_VAULT: &str = "other.vault.azure.net";
pub const HSM: &str = "demo.managedhsm.azure.net";
pub const MAA: &str = "sharedeus.eus.attest.azure.net";
pub const OTHER_MAA: &str = "sharedweu.weu.attest.azure.net";

pub struct Env {
    pub double: KeyVaultDouble,
    pub client: reqwest::Client,
}

impl Env {
    pub async fn start() -> Self {
        Self::with(Config::default()).await
    }

    pub async fn with(config: Config) -> Self {
        let double = KeyVaultDouble::start(config).await.expect("double starts");
        let client = double.client_for(&[VAULT, OTHER_VAULT, HSM, MAA, OTHER_MAA]);
        Self { double, client }
    }

    /// `https://<host>:<port>`.
    pub fn url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.double.addr().port())
    }

    pub async fn call(
        &self,
        method: &str,
        host: &str,
        path_and_query: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let url = format!("{}{path_and_query}", self.url(host));
        let mut req = self.client.request(method.parse().expect("method"), &url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request completes");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, value)
    }

    /// Calls with the operator's token and api-version 7.4.
    pub async fn op(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (s, _, v) = self
            .call(
                method,
                host,
                &format!("{path}?api-version=7.4"),
                Some("operator-token"),
                body,
            )
            .await;
        (s, v)
    }
}

/// The AKS release policy of Microsoft's demo script for `hash` at `maa_host`.
pub fn aks_policy(maa_host: &str, hash: &str) -> Value {
    json!({"version": "1.0.0", "anyOf": [{"authority": format!("https://{maa_host}"), "allOf": [
        {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "x-ms-sevsnpvm-hostdata", "equals": hash},
        {"claim": "x-ms-compliance-status", "equals": "azure-signed-katacc-uvm"},
        {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"},
        {"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}]}]})
}

pub fn encode_policy(policy: &Value) -> String {
    ckb_doubles::jose::b64url(policy.to_string().as_bytes())
}

/// A create body for an exportable HSM key bound to `policy`.
pub fn exportable(kty: &str, policy: &Value) -> Value {
    json!({
        "kty": kty,
        "key_ops": ["wrapKey", "unwrapKey", "encrypt", "decrypt"],
        "attributes": {"exportable": true},
        "release_policy": {"contentType": "application/json; charset=utf-8", "data": encode_policy(policy), "immutable": false},
        "tags": {"managed-by": "ckb-operator"}
    })
}

/// Every member of `example` exists in `actual` with the same JSON type, recursively (arrays
/// compared by their first element). Extra members in `actual` are allowed.
pub fn assert_same_shape(example: &Value, actual: &Value, at: &str) {
    match (example, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let av = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} missing in {actual}"));
                assert_same_shape(ev, av, &format!("{at}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if let (Some(e0), Some(a0)) = (e.first(), a.first()) {
                assert_same_shape(e0, a0, &format!("{at}[0]"));
            }
        }
        (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Null, Value::Null) => {}
        _ => panic!("{at}: example {example} vs actual {actual}"),
    }
}
