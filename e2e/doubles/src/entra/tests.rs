//! Tests of the Entra double.

use super::*;
use crate::jose::b64url;

const TENANT: &str = "72f988bf-0000-4000-8000-00000000c4b0";
const CLIENT: &str = "00000000-0000-4000-8000-0000000000c1";
const K8S: &str = "https://kubernetes.default.svc.cluster.local";

type Issuer = AssertionSigner;

fn sa_claims(now: i64) -> Value {
    json!({
        "iss": K8S, "aud": [TOKEN_EXCHANGE_AUDIENCE],
        "sub": "system:serviceaccount:ckb-system:ckb-operator",
        "iat": now, "nbf": now, "exp": now + 600,
    })
}

fn double(issuer: &Issuer) -> Entra {
    let mut c = EntraConfig::new(TENANT);
    c.issuers.push(issuer.trusted(K8S));
    c.credentials.push(FederatedCredential::service_account(
        CLIENT,
        K8S,
        "ckb-system",
        "ckb-operator",
    ));
    Entra::new(c).unwrap()
}

fn form(assertion: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", CLIENT)
        .append_pair("scope", "https://vault.azure.net/.default")
        .append_pair("client_assertion_type", ASSERTION_TYPE)
        .append_pair("client_assertion", assertion)
        .finish()
}

fn refusal(entra: &Entra, body: &str, now: i64) -> (u16, u32, Value) {
    let (status, answer) = entra.token(TENANT, body.as_bytes(), now);
    assert_ne!(status, 200, "{answer}");
    let code = answer["error_codes"][0].as_u64().unwrap() as u32;
    (status, code, answer)
}

const NOW: i64 = 1_790_000_000;

#[test]
fn a_matching_assertion_gets_a_token_the_resource_accepts() {
    let k8s = Issuer::generate();
    let entra = double(&k8s);
    let (status, answer) = entra.token(TENANT, form(&k8s.sign(&sa_claims(NOW))).as_bytes(), NOW);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 3600);
    let token = answer["access_token"].as_str().unwrap();
    let info = entra
        .verify_access_token(token, Some("https://vault.azure.net"), NOW + 10)
        .unwrap();
    assert_eq!(info.client_id, CLIENT);
    assert_eq!(
        info.issuer,
        format!("https://login.microsoftonline.com/{TENANT}/v2.0")
    );
    // Expired, tampered, or for another resource: refused.
    assert!(entra.verify_access_token(token, None, NOW + 3600).is_err());
    assert!(
        entra
            .verify_access_token(token, Some("https://managedhsm.azure.net"), NOW)
            .is_err()
    );
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64url(
        json!({"iss": entra.issuer(), "appid": "someone-else", "exp": NOW + 99, "aud": "https://vault.azure.net"})
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged;
    assert!(
        entra
            .verify_access_token(&parts.join("."), None, NOW)
            .is_err()
    );
    // Another Entra double's token (another signing key) is refused too.
    let other = double(&k8s);
    let (_, a) = other.token(TENANT, form(&k8s.sign(&sa_claims(NOW))).as_bytes(), NOW);
    assert!(
        entra
            .verify_access_token(a["access_token"].as_str().unwrap(), None, NOW)
            .is_err()
    );
    let log = entra.exchanges();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].assertion_subject.as_deref(),
        Some("system:serviceaccount:ckb-system:ckb-operator")
    );
}

#[test]
fn wrong_issuer_audience_subject_or_time_are_refused_with_their_aadsts_codes() {
    let k8s = Issuer::generate();
    let entra = double(&k8s);
    let with = |k: &str, v: Value| {
        let mut c = sa_claims(NOW);
        c[k] = v;
        form(&k8s.sign(&c))
    };
    let cases = [
        (with("iss", json!("https://evil.example")), 700211),
        (with("aud", json!(["api://other"])), 700212),
        (
            with("sub", json!("system:serviceaccount:ckb-system:other")),
            700213,
        ),
        (
            with(
                "sub",
                json!("system:serviceaccount:ckb-system:CKB-operator"),
            ),
            700213,
        ),
        (with("exp", json!(NOW - 3600)), 700024),
        (with("nbf", json!(NOW + 3600)), 700024),
    ];
    for (body, want) in cases {
        let (status, code, answer) = refusal(&entra, &body, NOW);
        assert_eq!((status, code), (401, want), "{answer}");
        assert_eq!(answer["error"], "invalid_client");
        let d = answer["error_description"].as_str().unwrap();
        assert!(d.starts_with(&format!("AADSTS{want}: ")), "{d}");
        assert!(
            d.contains("\r\nTrace ID: ") && d.contains("\r\nCorrelation ID: "),
            "{d}"
        );
        for k in ["timestamp", "trace_id", "correlation_id"] {
            assert!(
                answer[k].as_str().is_some_and(|s| !s.is_empty()),
                "{k}: {answer}"
            );
        }
    }
    // Signed by another key than the issuer's.
    let impostor = Issuer::generate();
    let (status, code, _) = refusal(&entra, &form(&impostor.sign(&sa_claims(NOW))), NOW);
    assert_eq!((status, code), (401, 50013));
    // Within the tolerated skew: accepted.
    let (status, _) = entra.token(TENANT, with("exp", json!(NOW - 30)).as_bytes(), NOW);
    assert_eq!(status, 200);
    let log = entra.exchanges();
    assert_eq!(log.iter().filter(|e| e.status == 200).count(), 1);
    assert_eq!(log.iter().filter(|e| e.aadsts == Some(700213)).count(), 2);
}

#[test]
fn protocol_errors_are_refused_before_the_assertion_is_read() {
    let k8s = Issuer::generate();
    let entra = double(&k8s);
    let good = k8s.sign(&sa_claims(NOW));
    let body = |pairs: &[(&str, &str)]| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k, v);
        }
        s.finish()
    };
    let base = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("scope", "https://vault.azure.net/.default"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", good.as_str()),
    ];
    let replace = |k: &str, v: &str| {
        let mut b = base.to_vec();
        b.retain(|(n, _)| *n != k);
        if !v.is_empty() {
            b.push((k, v));
        }
        body(&b)
    };
    let cases = [
        (replace("grant_type", "password"), 400, 70003),
        (replace("client_id", ""), 400, 900144),
        (replace("scope", "https://vault.azure.net"), 400, 70011),
        (replace("client_assertion_type", "urn:x"), 401, 7000218),
        (
            replace("client_id", "00000000-0000-4000-8000-0000000000ff"),
            400,
            700016,
        ),
        (replace("client_assertion", "not-a-jwt"), 401, 50013),
    ];
    for (b, status, code) in cases {
        let (s, c, answer) = refusal(&entra, &b, NOW);
        assert_eq!((s, c), (status, code), "{answer}");
    }
    let (status, answer) = entra.token("other-tenant", body(&base).as_bytes(), NOW);
    assert_eq!(
        (status, answer["error_codes"][0].as_u64()),
        (400, Some(90002))
    );
}
