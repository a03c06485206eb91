//! The Key Vault double over HTTPS: shapes of the public examples, the challenge, permissions,
//! validation, soft delete, versions, throttling and faults.

mod common;

use std::time::Duration;

use ckb_doubles::keyvault::throttle::ThrottleLimits;
use ckb_doubles::{Config, Fault, Permission};
use common::*;
use serde_json::{Value, json};

fn example(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("example file")).expect("json")
}

fn version_of(bundle: &Value) -> String {
    bundle["key"]["kid"]
        .as_str()
        .expect("kid")
        .rsplit('/')
        .next()
        .expect("version")
        .to_owned()
}

#[tokio::test]
async fn create_key_answers_the_shape_of_the_spec_example() {
    let env = Env::start().await;
    let ex = example("CreateKey-example.json");
    let name = ex["parameters"]["key-name"].as_str().unwrap();
    let (status, body) = env
        .op(
            "POST",
            VAULT,
            &format!("/keys/{name}/create"),
            Some(ex["parameters"]["parameters"].clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let expected = &ex["responses"]["200"]["body"];
    assert_same_shape(expected, &body, "KeyBundle");
    assert_eq!(body["tags"], expected["tags"]);
    assert_eq!(body["key"]["key_ops"], expected["key"]["key_ops"]);
    assert_eq!(body["key"]["kty"], "RSA");
    assert_eq!(body["key"]["e"], "AQAB");
    assert_eq!(body["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
    // kid = https://<host>/keys/<name>/<32 lowercase hex>
    let kid = body["key"]["kid"].as_str().unwrap();
    let prefix = format!("{}/keys/{name}/", env.url(VAULT));
    assert!(kid.starts_with(&prefix), "{kid}");
    let version = &kid[prefix.len()..];
    assert_eq!(version.len(), 32);
    assert!(
        version
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    // 2048-bit modulus, base64url without padding.
    let n = ckb_doubles::jose::b64url_decode(body["key"]["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256);
}

#[tokio::test]
async fn get_deleted_key_answers_the_shape_of_the_spec_example() {
    let env = Env::start().await;
    let ex = example("GetDeletedKey-example.json");
    let create = example("CreateKey-example.json")["parameters"]["parameters"].clone();
    assert_eq!(
        env.op(
            "POST",
            VAULT,
            "/keys/CreateSoftKeyTest/create",
            Some(create)
        )
        .await
        .0,
        200
    );
    let (status, deleted) = env
        .op("DELETE", VAULT, "/keys/CreateSoftKeyTest", None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = env
        .op("GET", VAULT, "/deletedkeys/CreateSoftKeyTest", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_same_shape(&ex["responses"]["200"]["body"], &body, "DeletedKeyBundle");
    assert_eq!(body, deleted);
    assert_eq!(
        body["recoveryId"],
        format!("{}/deletedkeys/CreateSoftKeyTest", env.url(VAULT))
    );
    let purge_after =
        body["scheduledPurgeDate"].as_i64().unwrap() - body["deletedDate"].as_i64().unwrap();
    assert_eq!(purge_after, 90 * 86_400);
}

#[tokio::test]
async fn requests_without_token_get_the_challenge_the_sdk_expects() {
    let env = Env::start().await;
    // The SDK's first request: no token, no body.
    let (status, headers, body) = env
        .call(
            "POST",
            VAULT,
            "/keys/k1/create?api-version=2025-07-01",
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "Unauthorized");
    assert_eq!(
        headers["www-authenticate"],
        format!(
            "Bearer authorization=\"https://login.microsoftonline.com/{}\", resource=\"https://vault.azure.net\"",
            ckb_doubles::server::DEFAULT_TENANT
        )
        .as_str()
    );
    let (status, headers, _) = env
        .call("GET", HSM, "/keys/k1/?api-version=7.4", None, None)
        .await;
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .ends_with("resource=\"https://managedhsm.azure.net\"")
    );
    // Nothing was created, nothing counted as a write.
    assert!(
        env.double
            .log()
            .iter()
            .all(|e| !e.write && e.status == Some(401))
    );
}

// Long by design: the default tokens' permissions, then the same calls against a strict double,
// side by side so that the difference between the two modes reads in one place.
#[tokio::test]
async fn permissions_and_strict_tokens() {
    let env = Env::start().await;
    let (status, _, body) = env
        .call(
            "POST",
            VAULT,
            "/keys/k1/create?api-version=7.4",
            Some("reader-token"),
            Some(json!({"kty": "EC-HSM"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "Forbidden");
    assert_eq!(body["error"]["innererror"]["code"], "ForbiddenByRbac");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keys/create/action")
    );
    let (status, _, _) = env
        .call(
            "POST",
            VAULT,
            "/keys/k1/release?api-version=7.4",
            Some("operator-token"),
            Some(json!({"target": "x"})),
        )
        .await;
    assert_eq!(status, 403, "the operator's identity cannot release");
    // Permissive by default: an unknown token may do anything.
    let (status, _, _) = env
        .call(
            "POST",
            VAULT,
            "/keys/k1/create?api-version=7.4",
            Some("any-test-token"),
            Some(json!({"kty": "EC-HSM"})),
        )
        .await;
    assert_eq!(status, 200);

    let strict = Env::with(Config {
        strict_auth: true,
        ..Config::default()
    })
    .await;
    let (status, headers, _) = strict
        .call(
            "GET",
            VAULT,
            "/keys/k1?api-version=7.4",
            Some("any-test-token"),
            None,
        )
        .await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    let mut config = Config {
        strict_auth: true,
        ..Config::default()
    };
    config
        .tokens
        .insert("t".into(), [Permission::Get].into_iter().collect());
    let custom = Env::with(config).await;
    assert_eq!(
        custom
            .call("GET", VAULT, "/keys?api-version=7.4", Some("t"), None)
            .await
            .0,
        403
    );
    assert_eq!(
        custom
            .call("GET", VAULT, "/keys/nope?api-version=7.4", Some("t"), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn api_versions_other_than_7_4_and_2025_07_01_are_refused() {
    let env = Env::start().await;
    for (v, expected) in [
        ("7.4", 200),
        ("2025-07-01", 200),
        ("7.3", 400),
        ("2016-10-01", 400),
    ] {
        let (status, _, body) = env
            .call(
                "GET",
                VAULT,
                &format!("/keys?api-version={v}"),
                Some("operator-token"),
                None,
            )
            .await;
        assert_eq!(status, expected, "{v}: {body}");
        if expected == 400 {
            assert_eq!(body["error"]["code"], "BadParameter");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("not recognized")
            );
        }
    }
    let (status, _, _) = env
        .call("GET", VAULT, "/keys", Some("operator-token"), None)
        .await;
    assert_eq!(status, 400);
}

// Long by design: one key through its versions (create, new version, update, reads by empty
// segment and by version); each step reads the state the previous ones left.
#[tokio::test]
async fn empty_path_segments_versions_and_patch() {
    let env = Env::start().await;
    let policy = aks_policy(MAA, &"a".repeat(64));
    let (s, v1) = env
        .op(
            "POST",
            VAULT,
            "/keys/k1/create",
            Some(exportable("RSA-HSM", &policy)),
        )
        .await;
    assert_eq!(s, 200, "{v1}");
    let (s, v2) = env
        .op(
            "POST",
            VAULT,
            "/keys/k1/create",
            Some(exportable("RSA-HSM", &policy)),
        )
        .await;
    assert_eq!(s, 200);
    assert_ne!(
        version_of(&v1),
        version_of(&v2),
        "re-create makes a new version"
    );

    // Latest through the SDK's empty segment, an older one by version.
    assert_eq!(env.op("GET", VAULT, "/keys/k1/", None).await.1, v2);
    assert_eq!(
        env.op("GET", VAULT, &format!("/keys/k1/{}", version_of(&v1)), None)
            .await
            .1,
        v1
    );
    let (s, err) = env
        .op(
            "GET",
            VAULT,
            "/keys/k1/00000000000000000000000000000000",
            None,
        )
        .await;
    assert_eq!(
        (s, err["error"]["code"].as_str()),
        (404, Some("KeyNotFound"))
    );
    let (_, versions) = env.op("GET", VAULT, "/keys/k1/versions", None).await;
    assert_eq!(versions["value"].as_array().unwrap().len(), 2);

    // The release policy as stored comes back exactly.
    assert_eq!(v2["release_policy"]["data"], encode_policy(&policy));
    assert_eq!(v2["release_policy"]["immutable"], false);
    assert_eq!(v2["attributes"]["exportable"], true);
    assert_eq!(v2["tags"]["managed-by"], "ckb-operator");

    let other = aks_policy(MAA, &"b".repeat(64));
    let (s, patched) = env
        .op(
            "PATCH",
            VAULT,
            "/keys/k1/",
            Some(json!({
            "release_policy": {"data": encode_policy(&other)},
            "tags": {"managed-by": "ckb-operator", "ckb-binding": "ns/b"}})),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["release_policy"]["data"], encode_policy(&other));
    assert_eq!(patched["tags"]["ckb-binding"], "ns/b");
    assert_eq!(
        version_of(&patched),
        version_of(&v2),
        "PATCH without version targets the latest"
    );
    // The older version keeps its own policy.
    let (_, old) = env
        .op("GET", VAULT, &format!("/keys/k1/{}", version_of(&v1)), None)
        .await;
    assert_eq!(old["release_policy"]["data"], encode_policy(&policy));
}

// Long by design: a table of requests the service refuses, then the ones it allows, on one
// double, ending with the check that nothing refused exists.
#[tokio::test]
async fn validation_rules_of_the_service() {
    // Many creates in a row: lift the create budget so throttling does not mask validation.
    let env = Env::with(Config {
        throttle: ThrottleLimits {
            hsm_creates: 1000,
            software_creates: 1000,
            ..ThrottleLimits::default()
        },
        ..Config::default()
    })
    .await;
    let policy = aks_policy(MAA, &"a".repeat(64));
    let long_name = "x".repeat(128);
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (VAULT, "bad_name", json!({"kty": "RSA-HSM"}), "invalid name"),
        (VAULT, &long_name, json!({"kty": "RSA-HSM"}), "invalid name"),
        (VAULT, "k", json!({}), "kty is required"),
        (VAULT, "k", json!({"kty": "DSA"}), "Invalid kty"),
        (
            VAULT,
            "k",
            json!({"kty": "oct-HSM"}),
            "not supported in a key vault",
        ),
        (
            HSM,
            "k",
            json!({"kty": "RSA"}),
            "not supported in a managed HSM",
        ),
        (
            HSM,
            "k",
            json!({"kty": "EC"}),
            "not supported in a managed HSM",
        ),
        (
            VAULT,
            "k",
            json!({"kty": "RSA-HSM", "key_size": 1024}),
            "Invalid key size",
        ),
        (
            VAULT,
            "k",
            json!({"kty": "EC-HSM", "crv": "P-192"}),
            "Invalid curve",
        ),
        (
            HSM,
            "k",
            json!({"kty": "oct-HSM", "key_size": 512}),
            "Invalid key size",
        ),
        (
            VAULT,
            "k",
            json!({"kty": "RSA-HSM", "key_ops": ["fly"]}),
            "Invalid key operation",
        ),
        (
            VAULT,
            "k",
            json!({"kty": "RSA-HSM", "attributes": {"exportable": true}}),
            "Release policy must be provided",
        ),
        (
            VAULT,
            "k",
            {
                let mut b = exportable("RSA", &policy);
                b["kty"] = "RSA".into();
                b
            },
            "Only HSM-protected keys can be exportable",
        ),
        (
            VAULT,
            "k",
            json!({"kty": "RSA-HSM", "attributes": {"exportable": true},
            "release_policy": {"data": ckb_doubles::jose::b64url(b"{\"anyOf\": []}")}}),
            "release policy is not valid",
        ),
        (
            VAULT,
            "k",
            json!({"kty": "RSA-HSM", "tags": (0..16).map(|i| (format!("t{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            "at most 15 tags",
        ),
    ];
    for (host, name, body, message) in cases {
        let (s, err) = env
            .op(
                "POST",
                host,
                &format!("/keys/{name}/create"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 400, "{body}: {err}");
        assert_eq!(err["error"]["code"], "BadParameter");
        let m = err["error"]["message"].as_str().unwrap();
        assert!(m.contains(message), "{body}: {m}");
    }
    // Allowed per kind and size.
    for (host, body) in [
        (VAULT, json!({"kty": "RSA-HSM", "key_size": 3072})),
        (VAULT, json!({"kty": "EC-HSM", "crv": "P-521"})),
        (VAULT, json!({"kty": "EC", "crv": "P-256K"})),
        (HSM, json!({"kty": "oct-HSM", "key_size": 128})),
        (HSM, exportable("EC-HSM", &policy)),
        (HSM, exportable("oct-HSM", &policy)),
    ] {
        let (s, b) = env
            .op("POST", host, "/keys/ok/create", Some(body.clone()))
            .await;
        assert_eq!(s, 200, "{body}: {b}");
    }
    // Nothing that was refused exists.
    let (_, list) = env.op("GET", VAULT, "/keys", None).await;
    let names: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kid"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[tokio::test]
async fn an_immutable_policy_can_never_change_again() {
    let env = Env::start().await;
    let p1 = aks_policy(MAA, &"a".repeat(64));
    let p2 = aks_policy(MAA, &"b".repeat(64));
    assert_eq!(
        env.op(
            "POST",
            VAULT,
            "/keys/k/create",
            Some(exportable("RSA-HSM", &p1))
        )
        .await
        .0,
        200
    );
    let (s, b) = env
        .op(
            "PATCH",
            VAULT,
            "/keys/k/",
            Some(json!({"release_policy": {"data": encode_policy(&p1), "immutable": true}})),
        )
        .await;
    assert_eq!((s, &b["release_policy"]["immutable"]), (200, &json!(true)));
    for attempt in [
        json!({"release_policy": {"data": encode_policy(&p2), "immutable": true}}),
        json!({"release_policy": {"data": encode_policy(&p1), "immutable": false}}),
    ] {
        let (s, err) = env
            .op("PATCH", VAULT, "/keys/k/", Some(attempt.clone()))
            .await;
        assert_eq!(s, 400, "{attempt}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("immutable"),
            "{err}"
        );
    }
    // Re-sending the same immutable policy is not a change; tags still update.
    let (s, _) = env
        .op("PATCH", VAULT, "/keys/k/", Some(json!({"release_policy": {"data": encode_policy(&p1), "immutable": true}, "tags": {"a": "b"}})))
        .await;
    assert_eq!(s, 200);
    let (_, now) = env.op("GET", VAULT, "/keys/k", None).await;
    assert_eq!(now["release_policy"]["data"], encode_policy(&p1));
    assert_eq!(now["release_policy"]["immutable"], true);
}

#[tokio::test]
async fn soft_delete_conflict_recover_purge() {
    let env = Env::start().await;
    let policy = aks_policy(MAA, &"a".repeat(64));
    let (_, created) = env
        .op(
            "POST",
            VAULT,
            "/keys/k/create",
            Some(exportable("EC-HSM", &policy)),
        )
        .await;
    let (s, deleted) = env.op("DELETE", VAULT, "/keys/k", None).await;
    assert_eq!(s, 200);
    assert_eq!(deleted["key"], created["key"]);
    assert_eq!(env.op("GET", VAULT, "/keys/k/", None).await.0, 404);
    let (s, err) = env
        .op(
            "POST",
            VAULT,
            "/keys/k/create",
            Some(exportable("EC-HSM", &policy)),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(err["error"]["code"], "Conflict");
    assert_eq!(
        err["error"]["innererror"]["code"],
        "ObjectIsDeletedButRecoverable"
    );
    let (s, recovered) = env.op("POST", VAULT, "/deletedkeys/k/recover", None).await;
    assert_eq!(s, 200);
    assert_eq!(recovered, created, "recovery restores the key as it was");
    assert_eq!(env.op("GET", VAULT, "/deletedkeys/k", None).await.0, 404);
    assert_eq!(env.op("DELETE", VAULT, "/keys/k", None).await.0, 200);
    let (s, _, _) = env
        .call(
            "DELETE",
            VAULT,
            "/deletedkeys/k?api-version=7.4",
            Some("admin-token"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        env.op(
            "POST",
            VAULT,
            "/keys/k/create",
            Some(exportable("EC-HSM", &policy))
        )
        .await
        .0,
        200
    );
    // Vaults are separate.
    assert_eq!(env.op("GET", OTHER_VAULT, "/keys/k", None).await.0, 404);
}

#[tokio::test]
async fn hsm_creates_are_throttled_at_ten_per_ten_seconds_per_vault() {
    let env = Env::start().await;
    for i in 0..10 {
        let (s, b) = env
            .op(
                "POST",
                VAULT,
                &format!("/keys/k{i}/create"),
                Some(json!({"kty": "EC-HSM"})),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    let (status, headers, body) = env
        .call(
            "POST",
            VAULT,
            "/keys/k10/create?api-version=7.4",
            Some("operator-token"),
            Some(json!({"kty": "EC-HSM"})),
        )
        .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "Throttled");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    // Other operations and other vaults have their own budgets.
    assert_eq!(env.op("GET", VAULT, "/keys/k0", None).await.0, 200);
    assert_eq!(
        env.op(
            "POST",
            OTHER_VAULT,
            "/keys/k/create",
            Some(json!({"kty": "EC-HSM"}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        env.op(
            "POST",
            VAULT,
            "/keys/soft/create",
            Some(json!({"kty": "EC"}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        env.double
            .log()
            .iter()
            .filter(|e| e.status == Some(429))
            .count(),
        1
    );
    assert!(env.double.keys()[VAULT]["keys"].get("k10").is_none());
}

#[tokio::test]
async fn throttled_requests_do_not_count_and_the_budget_comes_back() {
    let env = Env::with(Config {
        throttle: ThrottleLimits {
            window_ms: 1_500,
            hsm_creates: 2,
            ..ThrottleLimits::default()
        },
        ..Config::default()
    })
    .await;
    let create = || {
        env.op(
            "POST",
            VAULT,
            "/keys/k/create",
            Some(json!({"kty": "EC-HSM"})),
        )
    };
    assert_eq!(create().await.0, 200);
    assert_eq!(create().await.0, 200);
    for _ in 0..5 {
        assert_eq!(create().await.0, 429);
    }
    // Poll (bounded) until the window frees a slot; the 429s above must not have extended it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = create().await.0;
        if s == 200 {
            break;
        }
        assert_eq!(s, 429);
        assert!(
            std::time::Instant::now() < deadline,
            "budget never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        env.double.keys()[VAULT]["keys"]["k"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

// Long by design: the fault kinds one after another on one double (status, reset, apply then
// fail, apply then reset), each read back from the same request log.
#[tokio::test]
async fn injected_faults_status_reset_and_apply_then_fail() {
    let env = Env::start().await;
    env.double
        .inject(Fault::status("POST", "^/keys/[^/]+/create$", 503).times(1))
        .unwrap();
    let (s, h, _) = env
        .call(
            "POST",
            VAULT,
            "/keys/a/create?api-version=7.4",
            Some("operator-token"),
            Some(json!({"kty": "EC-HSM"})),
        )
        .await;
    assert_eq!(s, 503);
    assert_eq!(h["retry-after"], "1");
    assert!(
        env.double
            .keys()
            .get(VAULT)
            .is_none_or(|v| v["keys"].get("a").is_none())
    );
    assert_eq!(
        env.op(
            "POST",
            VAULT,
            "/keys/a/create",
            Some(json!({"kty": "EC-HSM"}))
        )
        .await
        .0,
        200
    );

    // Reset: the client sees a transport error, nothing is written.
    env.double
        .inject(Fault::reset("GET", "^/keys/a/?$"))
        .unwrap();
    let err = env
        .client
        .get(format!("{}/keys/a?api-version=7.4", env.url(VAULT)))
        .bearer_auth("operator-token")
        .send()
        .await
        .expect_err("connection reset");
    assert!(!err.is_status(), "{err}");
    assert_eq!(
        env.op("GET", VAULT, "/keys/a", None).await.0,
        200,
        "one reset only"
    );

    // Apply then fail: the create commits, the client sees 500.
    env.double
        .inject(
            Fault::status("POST", "/create$", 500)
                .after_apply()
                .on_vault(VAULT),
        )
        .unwrap();
    let (s, _) = env
        .op(
            "POST",
            VAULT,
            "/keys/b/create",
            Some(json!({"kty": "EC-HSM"})),
        )
        .await;
    assert_eq!(s, 500);
    assert_eq!(
        env.double.keys()[VAULT]["keys"]["b"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let last = env.double.log().last().cloned().unwrap();
    assert_eq!(
        (last.status, last.write, last.fault.as_deref()),
        (Some(500), true, Some("500 after apply"))
    );

    // Apply then reset after a delay (the "timeout" case).
    env.double
        .inject(Fault {
            after_apply: true,
            reset: true,
            delay_ms: 200,
            ..Fault::status("POST", "/create$", 500)
        })
        .unwrap();
    let err = env
        .client
        .post(format!("{}/keys/c/create?api-version=7.4", env.url(VAULT)))
        .bearer_auth("operator-token")
        .json(&json!({"kty": "EC-HSM"}))
        .send()
        .await;
    assert!(err.is_err());
    assert_eq!(
        env.double.keys()[VAULT]["keys"]["c"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn admin_api_over_http() {
    let env = Env::start().await;
    let admin = |method: &str, path: &str| {
        env.client
            .request(method.parse().unwrap(), format!("{}{path}", env.url(VAULT)))
    };
    let r = admin("POST", "/_double/faults")
        .json(&json!({"method": "GET", "path": "^/keys/x", "status": 500, "count": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let faults: Value = admin("GET", "/_double/faults")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults[0]["remaining"], 2);
    assert_eq!(env.op("GET", VAULT, "/keys/x", None).await.0, 500);
    assert_eq!(
        env.op(
            "POST",
            VAULT,
            "/keys/x/create",
            Some(json!({"kty": "EC-HSM"}))
        )
        .await
        .0,
        200
    );
    let log: Value = admin("GET", "/_double/log")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["status"], 500);
    assert_eq!(log[1]["method"], "POST");
    assert_eq!(log[1]["host"], VAULT);
    assert_eq!(log[1]["path"], "/keys/x/create");
    assert_eq!(log[1]["api_version"], "7.4");
    assert_eq!(log[1]["write"], true);
    let keys: Value = admin("GET", "/_double/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys[VAULT]["kind"], "premium");
    assert_eq!(keys[VAULT]["keys"]["x"][0]["key"]["kty"], "EC-HSM");
    assert!(keys[VAULT]["keys"]["x"][0]["material_sha256"].is_string());
    assert_eq!(
        admin("POST", "/_double/reset")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(env.op("GET", VAULT, "/keys/x", None).await.0, 404);
    let ca = admin("GET", "/_double/ca")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ca, env.double.ca_pem());
}

#[tokio::test]
async fn other_operations_have_their_own_configurable_budget() {
    let env = Env::with(Config {
        throttle: ThrottleLimits {
            other: 3,
            ..ThrottleLimits::default()
        },
        ..Config::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(env.op("GET", VAULT, "/keys/missing", None).await.0, 404);
    }
    let (status, headers, _) = env
        .call(
            "GET",
            VAULT,
            "/keys/missing?api-version=7.4",
            Some("operator-token"),
            None,
        )
        .await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    // Creates draw from the create budget, and the other vault is untouched.
    assert_eq!(
        env.op(
            "POST",
            VAULT,
            "/keys/k/create",
            Some(json!({"kty": "EC-HSM"}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        env.op("GET", OTHER_VAULT, "/keys/missing", None).await.0,
        404
    );
}
