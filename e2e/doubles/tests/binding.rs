//! Binding correctness, playing the SKR sidecar: a runtime RSA-2048 key, an attestation token
//! whose hostdata is the SHA-256 of the pod's policy, release, unwrap, and the released private
//! key matches the public key the vault shows. Then every way the binding must refuse.

mod common;

use ckb_doubles::TokenRequest;
use ckb_doubles::jose::{CompactJws, b64std_decode, b64url, b64url_decode, rsa_spki_der};
use ckb_doubles::sidecar::{self, ReleaseCall, RuntimeKey, SidecarError, Trust};
use common::*;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::Digest as _;

/// A stand-in for a pod's agent policy (Rego text); what matters is that the hash is computed
/// over these exact bytes, as the Kata shim does for HOST_DATA.
const POLICY_REGO: &str = "package agent_policy\n\ndefault CreateContainerRequest := true\n\npolicy_data := {\"containers\": []}\n";

fn policy_hash(rego: &str) -> String {
    hex::encode(sha2::Sha256::digest(rego.as_bytes()))
}

struct Setup {
    env: Env,
    hash: String,
}

impl Setup {
    async fn new() -> Self {
        Self {
            env: Env::start().await,
            hash: policy_hash(POLICY_REGO),
        }
    }

    async fn create(&self, host: &str, name: &str, body: Value) -> Value {
        let (s, b) = self
            .env
            .op("POST", host, &format!("/keys/{name}/create"), Some(body))
            .await;
        assert_eq!(s, 200, "{b}");
        b
    }

    fn trust(&self) -> Trust {
        Trust {
            roots: vec![self.env.double.ca_der()],
        }
    }

    fn call<'a>(&'a self, vault_url: &'a str, name: &'a str, token: &'a str) -> ReleaseCall<'a> {
        ReleaseCall {
            vault_url,
            key_name: name,
            version: None,
            bearer: "release-token",
            token,
            api_version: "7.4",
            enc: None,
        }
    }

    /// Token from the attestation double over HTTPS, like the sidecar gets from MAA.
    async fn token(&self, runtime: &RuntimeKey, req: TokenRequest) -> String {
        sidecar::attest(
            &self.env.client,
            &self.env.url(&req.issuer_host),
            runtime,
            req,
        )
        .await
        .expect("token")
    }

    fn good(&self) -> TokenRequest {
        TokenRequest {
            issuer_host: MAA.to_owned(),
            hostdata: self.hash.clone(),
            ..TokenRequest::default()
        }
    }

    async fn release(
        &self,
        host: &str,
        name: &str,
        req: TokenRequest,
    ) -> Result<sidecar::ReleasedKey, SidecarError> {
        let runtime = RuntimeKey::generate().unwrap();
        let token = self.token(&runtime, req).await;
        let url = self.env.url(host);
        sidecar::release_key(
            &self.env.client,
            &self.call(&url, name, &token),
            &runtime,
            &self.trust(),
        )
        .await
    }
}

#[tokio::test]
async fn released_rsa_key_matches_the_vault_public_key() {
    let s = Setup::new().await;
    let created = s
        .create(
            VAULT,
            "app-key",
            exportable("RSA-HSM", &aks_policy(MAA, &s.hash)),
        )
        .await;

    let released = s
        .release(VAULT, "app-key", s.good())
        .await
        .expect("released");
    assert_eq!(released.kty, "RSA-HSM");
    assert_eq!(released.kid, created["key"]["kid"]);
    assert_eq!(
        released.enc, "CKM_RSA_AES_KEY_WRAP",
        "the service default when the sidecar sends no enc"
    );

    // Same modulus and exponent as the public key Key Vault shows.
    let private = rsa::PrivateKey::from_pkcs8_der(&released.key_bytes).expect("PKCS#8 RSA key");
    assert_eq!(b64url(&private.n_bytes()), created["key"]["n"]);
    assert_eq!(b64url(&private.e_bytes()), created["key"]["e"]);
    let jwk = released.private_jwk().unwrap();
    assert_eq!(jwk["n"], created["key"]["n"]);
    assert!(jwk["d"].is_string() && jwk["p"].is_string() && jwk["q"].is_string());

    // And it really is the private half: decrypt what the vault's public key encrypted.
    let n = b64url_decode(created["key"]["n"].as_str().unwrap()).unwrap();
    let e = b64url_decode(created["key"]["e"].as_str().unwrap()).unwrap();
    let public = aws_lc_rs::rsa::PublicEncryptingKey::from_der(&rsa_spki_der(&n, &e)).unwrap();
    let oaep = aws_lc_rs::rsa::OaepPublicEncryptingKey::new(public).unwrap();
    let mut ct = vec![0u8; oaep.ciphertext_size()];
    let ct = oaep
        .encrypt(
            &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
            b"binding works",
            &mut ct,
            None,
        )
        .unwrap()
        .to_vec();
    let pt = private
        .decrypt(rsa::Oaep::<sha2::Sha256>::new(), &ct)
        .unwrap();
    assert_eq!(pt, b"binding works");

    // The request log shows the sidecar's exact call: no version, api-version 7.4, no write.
    let release = s
        .env
        .double
        .log()
        .into_iter()
        .find(|e| e.path.ends_with("/release"))
        .unwrap();
    assert_eq!(release.path, "/keys/app-key/release");
    assert_eq!(
        (
            release.api_version.as_deref(),
            release.status,
            release.write
        ),
        (Some("7.4"), Some(200), false)
    );
}

#[tokio::test]
async fn release_answer_has_the_shape_the_sidecar_reads() {
    let s = Setup::new().await;
    let policy = aks_policy(MAA, &s.hash);
    let created = s.create(VAULT, "k", exportable("RSA-HSM", &policy)).await;
    let runtime = RuntimeKey::generate().unwrap();
    let token = s.token(&runtime, s.good()).await;
    // The SDK form of the path: empty version segment, api-version 2025-07-01.
    let (status, _, body) = s
        .env
        .call(
            "POST",
            VAULT,
            "/keys/k//release?api-version=2025-07-01",
            Some("release-token"),
            Some(json!({"target": token})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let jws = CompactJws::parse(body["value"].as_str().unwrap()).unwrap();

    // Header: alg RS256, x5c standard base64 DER leaf-first, x5t#S256 of the leaf.
    assert_eq!(jws.header["alg"], "RS256");
    let x5c: Vec<Vec<u8>> = jws.header["x5c"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| b64std_decode(c.as_str().unwrap()).expect("standard base64"))
        .collect();
    assert!(x5c.len() >= 2);
    assert_eq!(
        jws.header["x5t#S256"],
        b64url(&sha2::Sha256::digest(&x5c[0]))
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&x5c[0]).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(
        format!("{:?}", san.value.general_names).contains(VAULT),
        "leaf names the vault host"
    );
    assert_eq!(
        x5c.last().unwrap(),
        &s.env.double.ca_der(),
        "chain ends at the trusted root"
    );
    jws.verify_with_certificate(&x5c[0])
        .expect("signed by x5c[0]");

    // Payload.
    let p: Value = serde_json::from_slice(&jws.payload).unwrap();
    assert_eq!(p["request"]["api-version"], "2025-07-01");
    assert_eq!(p["request"]["enc"], "CKM_RSA_AES_KEY_WRAP");
    assert_eq!(p["request"]["kid"], created["key"]["kid"]);
    let key = &p["response"]["key"];
    assert_eq!(key["key"]["kid"], created["key"]["kid"]);
    assert_eq!(key["key"]["kty"], "RSA-HSM");
    assert_eq!(key["key"]["key_ops"], created["key"]["key_ops"]);
    assert_eq!(key["attributes"]["exportable"], true);
    assert_eq!(
        key["release_policy"]["contentType"],
        "application/json; charset=utf-8"
    );
    assert_eq!(key["release_policy"]["data"], encode_policy(&policy));
    let key_hsm: Value =
        serde_json::from_slice(&b64url_decode(key["key"]["key_hsm"].as_str().unwrap()).unwrap())
            .unwrap();
    let ct = b64url_decode(key_hsm["ciphertext"].as_str().unwrap()).unwrap();
    assert!(key_hsm["schema_version"].is_string() && key_hsm["header"].is_object());

    // Unwrap written here from the spec, step by step: first 256 bytes are RSA-OAEP(SHA-1) of the
    // AES-256 key under the runtime key, the rest AES-KWP (RFC 5649) of the PKCS#8 key.
    let jwk = runtime.public_jwk();
    assert_eq!(jwk["key_ops"], json!(["encrypt"]));
    let key_bytes = runtime.unwrap("CKM_RSA_AES_KEY_WRAP", &ct).unwrap();
    let (kek_part, wrapped) = ct.split_at(256);
    assert_eq!(wrapped.len() % 8, 0, "KWP output is a multiple of 8 bytes");
    assert!(wrapped.len() >= key_bytes.len() + 8);
    assert_eq!(kek_part.len(), 256, "RSA-2048 block first");
    let private = rsa::PrivateKey::from_pkcs8_der(&key_bytes).unwrap();
    assert_eq!(b64url(&private.n_bytes()), created["key"]["n"]);
}

#[tokio::test]
async fn every_wrapping_algorithm_and_key_type_round_trips() {
    let s = Setup::new().await;
    let policy = aks_policy(MAA, &s.hash);
    s.create(VAULT, "rsa", exportable("RSA-HSM", &policy)).await;
    for enc in [
        "CKM_RSA_AES_KEY_WRAP",
        "RSA_AES_KEY_WRAP_256",
        "RSA_AES_KEY_WRAP_384",
    ] {
        let runtime = RuntimeKey::generate().unwrap();
        let token = s.token(&runtime, s.good()).await;
        let url = s.env.url(VAULT);
        let call = ReleaseCall {
            enc: Some(enc),
            ..s.call(&url, "rsa", &token)
        };
        let released = sidecar::release_key(&s.env.client, &call, &runtime, &s.trust())
            .await
            .unwrap();
        assert_eq!(released.enc, enc);
        rsa::PrivateKey::from_pkcs8_der(&released.key_bytes).unwrap();
    }

    // EC-HSM: released PKCS#8 holds the same point.
    let mut ec = exportable("EC-HSM", &policy);
    ec["crv"] = "P-384".into();
    ec["key_ops"] = json!(["sign", "verify"]);
    let created = s.create(VAULT, "ec", ec).await;
    let released = s.release(VAULT, "ec", s.good()).await.unwrap();
    let jwk = released.private_jwk().unwrap();
    assert_eq!(
        (&jwk["crv"], &jwk["x"], &jwk["y"]),
        (
            &created["key"]["crv"],
            &created["key"]["x"],
            &created["key"]["y"]
        )
    );
    assert_eq!(b64url_decode(jwk["d"].as_str().unwrap()).unwrap().len(), 48);

    // oct-HSM on a Managed HSM: raw bytes; the dump's fingerprint is of the vault's material.
    let mut oct = exportable("oct-HSM", &policy);
    oct["key_size"] = 256.into();
    s.create(HSM, "aes", oct).await;
    let released = s.release(HSM, "aes", s.good()).await.unwrap();
    assert_eq!(released.key_bytes.len(), 32);
    assert_eq!(
        s.env.double.keys()[HSM]["keys"]["aes"][0]["material_sha256"],
        hex::encode(sha2::Sha256::digest(&released.key_bytes))
    );

    // A specific older version releases that version's material.
    let v1 = s
        .create(VAULT, "multi", exportable("RSA-HSM", &policy))
        .await;
    s.create(VAULT, "multi", exportable("RSA-HSM", &policy))
        .await;
    let version = v1["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let runtime = RuntimeKey::generate().unwrap();
    let token = s.token(&runtime, s.good()).await;
    let url = s.env.url(VAULT);
    let call = ReleaseCall {
        version: Some(&version),
        ..s.call(&url, "multi", &token)
    };
    let released = sidecar::release_key(&s.env.client, &call, &runtime, &s.trust())
        .await
        .unwrap();
    let private = rsa::PrivateKey::from_pkcs8_der(&released.key_bytes).unwrap();
    assert_eq!(b64url(&private.n_bytes()), v1["key"]["n"]);
}

#[tokio::test]
async fn older_policy_grammar_releases_too() {
    let s = Setup::new().await;
    let older = json!({"anyOf": [{"authority": format!("https://{MAA}/"), "allOf": [
        {"claim": "x-ms-sevsnpvm-hostdata", "condition": "equals", "value": s.hash},
        {"claim": "x-ms-sevsnpvm-is-debuggable", "condition": "equals", "value": "false"}]}]});
    s.create(VAULT, "k", exportable("RSA-HSM", &older)).await;
    s.release(VAULT, "k", s.good())
        .await
        .expect("released under the older grammar");
    let refused = s
        .release(
            VAULT,
            "k",
            TokenRequest {
                hostdata: "f".repeat(64),
                ..s.good()
            },
        )
        .await;
    assert!(matches!(
        refused,
        Err(SidecarError::Refused { status: 403, .. })
    ));
}

#[tokio::test]
async fn release_for_pod_is_the_whole_sidecar_flow() {
    let s = Setup::new().await;
    s.create(VAULT, "k", exportable("RSA-HSM", &aks_policy(MAA, &s.hash)))
        .await;
    let url = s.env.url(VAULT);
    let call = s.call(&url, "k", "");
    let released = sidecar::release_for_pod(
        &s.env.client,
        &call,
        &s.env.url(MAA),
        MAA,
        &s.hash,
        &s.trust(),
    )
    .await
    .unwrap();
    assert_eq!(released.kty, "RSA-HSM");
    let other = sidecar::release_for_pod(
        &s.env.client,
        &call,
        &s.env.url(MAA),
        MAA,
        &policy_hash("other"),
        &s.trust(),
    )
    .await;
    assert!(matches!(
        other,
        Err(SidecarError::Refused { status: 403, .. })
    ));
}

fn assert_refused(result: Result<sidecar::ReleasedKey, SidecarError>, why: &str, message: &str) {
    assert_refused_with(result, why, &[message]);
}

fn assert_refused_with(
    result: Result<sidecar::ReleasedKey, SidecarError>,
    why: &str,
    messages: &[&str],
) {
    match result {
        Err(SidecarError::Refused { status, body, .. }) => {
            assert_eq!(status, 403, "{why}: {body}");
            let v: Value = serde_json::from_str(&body).expect("JSON error body");
            assert_eq!(v["error"]["code"], "Forbidden", "{why}");
            let m = v["error"]["message"].as_str().unwrap();
            for message in messages {
                assert!(m.contains(message), "{why}: {m}");
            }
            assert!(v.get("value").is_none());
        }
        Ok(_) => panic!("{why}: the key was released"),
        Err(other) => panic!("{why}: {other}"),
    }
}

// Long by design: mostly a table of the workloads that must not get the key, then the two cases
// whose token is built by hand, and at the end the one check that every refusal was a 403 and
// nothing was written; split, that check would be repeated in every part.
#[tokio::test]
async fn the_binding_refuses_every_other_workload() {
    let s = Setup::new().await;
    s.create(VAULT, "k", exportable("RSA-HSM", &aks_policy(MAA, &s.hash)))
        .await;
    let cases = [
        (
            "another pod's policy",
            TokenRequest {
                hostdata: policy_hash("package other\n"),
                ..s.good()
            },
            "x-ms-sevsnpvm-hostdata",
        ),
        (
            "a debuggable VM",
            TokenRequest {
                debuggable: true,
                ..s.good()
            },
            "x-ms-sevsnpvm-is-debuggable",
        ),
        (
            "VMPL 1",
            TokenRequest {
                vmpl: 1,
                ..s.good()
            },
            "x-ms-sevsnpvm-vmpl",
        ),
        (
            "another authority",
            TokenRequest {
                issuer_host: OTHER_MAA.to_owned(),
                ..s.good()
            },
            "not an authority",
        ),
        (
            "an SGX enclave",
            TokenRequest {
                attestation_type: "sgx".into(),
                ..s.good()
            },
            "x-ms-attestation-type",
        ),
        (
            "a non-compliant UVM",
            TokenRequest {
                compliance_status: "azure-compliant-uvm".into(),
                ..s.good()
            },
            "x-ms-compliance-status",
        ),
        (
            "an expired token",
            TokenRequest {
                expired: true,
                ..s.good()
            },
            "expired",
        ),
        (
            "a token signed by another key",
            TokenRequest {
                foreign_signature: true,
                ..s.good()
            },
            "signature",
        ),
    ];
    for (why, req, message) in cases {
        let result = s.release(VAULT, "k", req).await;
        assert_refused_with(
            result,
            why,
            &["attestation statement cannot be verified", message],
        );
    }
    // A token without a runtime encryption key cannot be wrapped for.
    let token = s.env.double.mint_token(&s.good()).unwrap();
    let runtime = RuntimeKey::generate().unwrap();
    let url = s.env.url(VAULT);
    assert_refused(
        sidecar::release_key(
            &s.env.client,
            &s.call(&url, "k", &token),
            &runtime,
            &s.trust(),
        )
        .await,
        "no runtime key",
        "x-ms-runtime",
    );
    // A tampered payload (hostdata swapped after signing).
    let good = s.token(&runtime, s.good()).await;
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&b64url_decode(&parts[1]).unwrap()).unwrap();
    claims["x-ms-sevsnpvm-hostdata"] = json!(policy_hash("package other\n"));
    parts[1] = b64url(claims.to_string().as_bytes());
    let tampered = parts.join(".");
    assert_refused(
        sidecar::release_key(
            &s.env.client,
            &s.call(&url, "k", &tampered),
            &runtime,
            &s.trust(),
        )
        .await,
        "tampered token",
        "signature",
    );
    // Every refusal was a 403 and nothing was written.
    let log = s.env.double.log();
    let releases: Vec<_> = log
        .iter()
        .filter(|e| e.path.ends_with("/release"))
        .collect();
    assert_eq!(releases.len(), 10);
    assert!(releases.iter().all(|e| e.status == Some(403) && !e.write));
}

#[tokio::test]
async fn keys_that_are_not_exportable_or_disabled_are_never_released() {
    let s = Setup::new().await;
    s.create(VAULT, "plain", json!({"kty": "RSA-HSM"})).await;
    assert_refused(
        s.release(VAULT, "plain", s.good()).await,
        "not exportable",
        "not exportable",
    );
    s.create(
        VAULT,
        "off",
        exportable("RSA-HSM", &aks_policy(MAA, &s.hash)),
    )
    .await;
    let (st, _) = s
        .env
        .op(
            "PATCH",
            VAULT,
            "/keys/off",
            Some(json!({"attributes": {"enabled": false}})),
        )
        .await;
    assert_eq!(st, 200);
    assert_refused(
        s.release(VAULT, "off", s.good()).await,
        "disabled",
        "disabled",
    );
    let missing = s.release(VAULT, "missing", s.good()).await;
    assert!(matches!(
        missing,
        Err(SidecarError::Refused { status: 404, .. })
    ));
}

#[tokio::test]
async fn the_sidecar_rejects_an_answer_signed_for_another_host() {
    // The double signs releases of demo.vault.azure.net with a leaf naming that host; a sidecar
    // talking to another vault must not accept it.
    let s = Setup::new().await;
    s.create(VAULT, "k", exportable("RSA-HSM", &aks_policy(MAA, &s.hash)))
        .await;
    let runtime = RuntimeKey::generate().unwrap();
    let token = s.token(&runtime, s.good()).await;
    let (status, _, body) = s
        .env
        .call(
            "POST",
            VAULT,
            "/keys/k/release?api-version=7.4",
            Some("release-token"),
            Some(json!({"target": token})),
        )
        .await;
    assert_eq!(status, 200);
    let jws = body["value"].as_str().unwrap();
    sidecar::open_release(jws, VAULT, &runtime, &s.trust()).expect("accepted for its own host");
    let wrong_host = sidecar::open_release(jws, OTHER_VAULT, &runtime, &s.trust());
    assert!(matches!(wrong_host, Err(SidecarError::Invalid(m)) if m.contains("names")));
    let from_pem = Trust::from_pem(&s.env.double.ca_pem()).unwrap();
    assert_eq!(from_pem.roots, s.trust().roots);
    sidecar::open_release(jws, VAULT, &runtime, &from_pem).expect("CA read from PEM");
    let untrusted = sidecar::open_release(jws, VAULT, &runtime, &Trust { roots: vec![] });
    assert!(untrusted.is_err());
    let other_runtime = RuntimeKey::generate().unwrap();
    assert!(
        sidecar::open_release(jws, VAULT, &other_runtime, &s.trust()).is_err(),
        "only the runtime key unwraps"
    );
}

/// The sidecar's own attest call (`POST /attest/SevSnpVM`, body as the sidecar builds it with
/// Go's padded base64url), from a raw SEV-SNP report whose HOST_DATA is the policy hash.
async fn attest_raw(
    s: &Setup,
    runtime: &RuntimeKey,
    policy_bits: u64,
    host_data: &[u8],
    bind: bool,
) -> (u16, Value) {
    use base64::Engine as _;
    let padded = |b: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(b);
    let runtime_data = serde_json::to_vec(&runtime.jwks()).unwrap();
    let report_data = if bind {
        sha2::Sha256::digest(&runtime_data).to_vec()
    } else {
        vec![7u8; 32]
    };
    let report = ckb_doubles::attestation::SnpReport {
        policy: policy_bits,
        vmpl: 0,
        report_data,
        measurement: vec![0xab; 48],
        host_data: host_data.to_vec(),
    };
    let inner = json!({
        "SnpReport": padded(&report.to_bytes()),
        "VcekCertChain": padded(b"-----BEGIN CERTIFICATE-----\n"),
        "Endorsements": padded(json!({"Uvm": [padded(b"cose")]}).to_string().as_bytes()),
    });
    let body = json!({
        "report": padded(inner.to_string().as_bytes()),
        "runtimeData": {"data": padded(&runtime_data), "dataType": "JSON"},
        "nonce": 42,
    });
    let (status, _, answer) = s
        .env
        .call(
            "POST",
            MAA,
            "/attest/SevSnpVM?api-version=2020-10-01",
            None,
            Some(body),
        )
        .await;
    (status, answer)
}

#[tokio::test]
async fn the_sidecars_attest_call_yields_a_token_that_releases_only_for_the_bound_policy() {
    let s = Setup::new().await;
    let created = s
        .create(VAULT, "k", exportable("RSA-HSM", &aks_policy(MAA, &s.hash)))
        .await;
    let hash_bytes = hex::decode(&s.hash).unwrap();
    let url = s.env.url(VAULT);

    let runtime = RuntimeKey::generate().unwrap();
    let (status, answer) = attest_raw(&s, &runtime, 0x3_0000, &hash_bytes, true).await;
    assert_eq!(status, 200, "{answer}");
    let token = answer["token"].as_str().unwrap();
    let claims: Value = serde_json::from_slice(&CompactJws::parse(token).unwrap().payload).unwrap();
    assert_eq!(claims["x-ms-sevsnpvm-hostdata"], s.hash);
    assert_eq!(claims["x-ms-sevsnpvm-is-debuggable"], false);
    assert_eq!(claims["x-ms-sevsnpvm-vmpl"], 0);
    assert_eq!(claims["x-ms-runtime"], runtime.jwks());
    assert_eq!(claims["iss"], format!("https://{MAA}"));
    assert_eq!(claims["x-ms-sevsnpvm-launchmeasurement"], "ab".repeat(48));
    let released = sidecar::release_key(
        &s.env.client,
        &s.call(&url, "k", token),
        &runtime,
        &s.trust(),
    )
    .await
    .unwrap();
    let private = rsa::PrivateKey::from_pkcs8_der(&released.key_bytes).unwrap();
    assert_eq!(b64url(&private.n_bytes()), created["key"]["n"]);

    // Debug allowed in the guest policy (bit 19): the token says so and release is refused.
    let runtime = RuntimeKey::generate().unwrap();
    let (_, answer) = attest_raw(&s, &runtime, 0x3_0000 | (1 << 19), &hash_bytes, true).await;
    let token = answer["token"].as_str().unwrap();
    assert_refused(
        sidecar::release_key(
            &s.env.client,
            &s.call(&url, "k", token),
            &runtime,
            &s.trust(),
        )
        .await,
        "debug report",
        "x-ms-sevsnpvm-is-debuggable",
    );
    // Another pod's HOST_DATA.
    let (_, answer) = attest_raw(&s, &runtime, 0x3_0000, &[9u8; 32], true).await;
    let token = answer["token"].as_str().unwrap();
    assert_refused(
        sidecar::release_key(
            &s.env.client,
            &s.call(&url, "k", token),
            &runtime,
            &s.trust(),
        )
        .await,
        "other host data",
        "x-ms-sevsnpvm-hostdata",
    );
    // REPORT_DATA that does not bind the runtime key: no token at all.
    let (status, answer) = attest_raw(&s, &runtime, 0x3_0000, &hash_bytes, false).await;
    assert_eq!(status, 400, "{answer}");
}
