//! Tests of the release policy builder, parser and comparison.

use std::collections::BTreeSet;

use ckb_crds::ConfidentialKeyBindingSpec;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::json;

use super::*;
use crate::policy::hash::hash_rego;

const MAA: &str = "sharedeus.eus.attest.azure.net";

fn spec(attestation: serde_json::Value) -> ConfidentialKeyBindingSpec {
    serde_json::from_value(json!({
        "podSelector": {"matchLabels": {"app": "orders"}},
        "key": {"vault": "https://contoso.vault.azure.net", "name": "orders-key"},
        "attestation": attestation,
        "policy": {"configMapRef": {"name": "orders-policy"}}
    }))
    .expect("valid binding spec")
}

fn typical_spec() -> ConfidentialKeyBindingSpec {
    spec(json!({"authority": format!("https://{MAA}")}))
}

fn hashes(regos: &[&str]) -> BTreeSet<PolicyHash> {
    regos.iter().map(|r| hash_rego(r.as_bytes())).collect()
}

/// The policy Microsoft's `kafka/setup-key.sh` (confidential-container-demos) writes, with the
/// placeholders filled in; its text is reproduced as the script's heredoc lays it out.
fn setup_key_sh_policy(maa: &str, measurement: &str) -> String {
    format!(
        r#"{{
    "anyOf": [
        {{
            "authority": "https://{maa}",
            "allOf": [
                {{"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}},
                {{"claim": "x-ms-sevsnpvm-hostdata", "equals": "{measurement}"}},
                {{"claim": "x-ms-compliance-status", "equals": "azure-signed-katacc-uvm"}},
                {{"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"}}
            ]
        }}
    ],
    "version": "1.0.0"
}}"#
    )
}

#[test]
fn typical_binding_means_what_setup_key_sh_writes_plus_our_hash() {
    let h = hash_rego(b"package agent_policy\ndefault CreateContainerRequest := true\n");
    let ours = ReleasePolicy::for_binding(&typical_spec(), &BTreeSet::from([h.clone()])).unwrap();
    let microsoft = ReleasePolicy::parse_json(&setup_key_sh_policy(MAA, h.as_str())).unwrap();
    assert!(
        ours.same_meaning(&microsoft),
        "ours: {}\nmicrosoft: {}",
        ours.to_json(),
        microsoft.to_json()
    );
    // And a different measurement or authority is a different meaning.
    let other = hash_rego(b"package other\n");
    let m2 = ReleasePolicy::parse_json(&setup_key_sh_policy(MAA, other.as_str())).unwrap();
    assert!(!ours.same_meaning(&m2));
    let m3 = ReleasePolicy::parse_json(&setup_key_sh_policy(
        "sharedweu.weu.attest.azure.net",
        h.as_str(),
    ))
    .unwrap();
    assert!(!ours.same_meaning(&m3));
}

#[test]
fn vmpl_extra_claim_matches_test_setup_sh_variant() {
    let h = hash_rego(b"p");
    let s = spec(json!({
        "authority": format!("https://{MAA}/"),
        "extraClaims": [{"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}]
    }));
    let ours = ReleasePolicy::for_binding(&s, &BTreeSet::from([h.clone()])).unwrap();
    let theirs = json!({"version": "1.0.0", "anyOf": [{"authority": format!("https://{MAA}"), "allOf": [
        {"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"},
        {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "x-ms-sevsnpvm-hostdata", "equals": h.as_str()},
        {"claim": "x-ms-compliance-status", "equals": "azure-signed-katacc-uvm"},
        {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"}
    ]}]});
    assert!(ours.same_meaning(&ReleasePolicy::from_value(&theirs).unwrap()));
    // The trailing slash of the spec's authority is not carried into the policy.
    assert_eq!(
        ours.authorities(),
        BTreeSet::from([format!("https://{MAA}").as_str()])
    );
}

#[test]
fn one_authority_entry_per_hash_each_pinning_everything() {
    let hs = hashes(&["a", "b", "c"]);
    let p = ReleasePolicy::for_binding(&typical_spec(), &hs).unwrap();
    assert_eq!(p.any_of.len(), 3);
    assert_eq!(
        p.hostdata_hashes(),
        hs.iter().map(|h| h.to_string()).collect::<BTreeSet<_>>()
    );
    assert_eq!(p.bound_hashes(), hs);
    for rule in &p.any_of {
        let Conditions::AllOf(claims) = &rule.conditions else {
            panic!("conditions must be allOf: {rule:?}")
        };
        let names: Vec<&str> = claims.iter().map(|c| c.claim.as_str()).collect();
        assert_eq!(
            names,
            [
                CLAIM_ATTESTATION_TYPE,
                CLAIM_HOSTDATA,
                CLAIM_COMPLIANCE_STATUS,
                CLAIM_IS_DEBUGGABLE
            ]
        );
        assert_eq!(claims[0].equals, ClaimValue::string("sevsnpvm"));
        assert_eq!(
            claims[2].equals,
            ClaimValue::string("azure-signed-katacc-uvm")
        );
        assert_eq!(claims[3].equals, ClaimValue::string("false"));
    }
    assert_eq!(p.version.as_deref(), Some("1.0.0"));
}

#[test]
fn allow_debuggable_drops_the_debuggable_pin_and_compliance_status_is_taken_from_spec() {
    let s = spec(json!({
        "authority": format!("https://{MAA}"),
        "allowDebuggable": true,
        "complianceStatus": "azure-compliant-uvm"
    }));
    let p = ReleasePolicy::for_binding(&s, &hashes(&["x"])).unwrap();
    let claims = p.any_of[0].conditions.claims();
    assert!(claims.iter().all(|c| c.claim != CLAIM_IS_DEBUGGABLE));
    assert!(claims.iter().any(|c| c.claim == CLAIM_COMPLIANCE_STATUS
        && c.equals == ClaimValue::string("azure-compliant-uvm")));
}

#[test]
fn json_is_compact_deterministic_and_in_alphabetical_member_order() {
    let h = hash_rego(b"x");
    let p = ReleasePolicy::for_binding(&typical_spec(), &BTreeSet::from([h.clone()])).unwrap();
    let text = p.to_json();
    assert!(
        text.starts_with(
            r#"{"anyOf":[{"allOf":[{"claim":"x-ms-attestation-type","equals":"sevsnpvm"}"#
        ),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            r#"],"authority":"https://{MAA}"}}],"version":"1.0.0"}}"#
        )),
        "{text}"
    );
    assert!(!text.contains(char::is_whitespace));
    // Extra claims in any order give the same bytes.
    let claims = [
        ("x-ms-sevsnpvm-vmpl", "0"),
        ("x-ms-sevsnpvm-guestsvn", "100"),
        ("x-ms-ver", "1.0"),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let mut c = claims.to_vec();
        c.shuffle(&mut rng);
        let s = spec(json!({
            "authority": format!("https://{MAA}"),
            "extraClaims": c.iter().map(|(k, v)| json!({"claim": k, "equals": v})).collect::<Vec<_>>()
        }));
        seen.insert(
            ReleasePolicy::for_binding(&s, &hashes(&["p", "q"]))
                .unwrap()
                .to_json(),
        );
    }
    assert_eq!(seen.len(), 1, "{seen:#?}");
}

#[test]
fn round_trip_build_encode_decode_parse() {
    let s = spec(json!({
        "authority": format!("https://{MAA}"),
        "extraClaims": [{"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}]
    }));
    for n in 1..=5 {
        let regos: Vec<String> = (0..n).map(|i| format!("policy {i}")).collect();
        let hs: BTreeSet<PolicyHash> = regos.iter().map(|r| hash_rego(r.as_bytes())).collect();
        let p = ReleasePolicy::for_binding(&s, &hs).unwrap();
        let data = p.encoded();
        assert!(
            !data.contains(['=', '+', '/']),
            "base64url without padding: {data}"
        );
        let back = ReleasePolicy::decode_data(&data).unwrap();
        assert_eq!(back, p);
        assert!(back.same_meaning(&p));
        back.validate().unwrap();
        // Padded base64url and standard base64 of the same JSON decode to the same policy.
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        assert_eq!(
            ReleasePolicy::decode_data(&URL_SAFE.encode(p.to_json())).unwrap(),
            p
        );
        assert_eq!(
            ReleasePolicy::decode_data(&STANDARD.encode(p.to_json())).unwrap(),
            p
        );
        // The serde form is the same grammar.
        let via_serde: ReleasePolicy =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(via_serde, p);
    }
}

#[test]
fn decode_data_reports_bad_base64_and_bad_utf8() {
    assert!(matches!(
        ReleasePolicy::decode_data("not*base64"),
        Err(ReleasePolicyError::Base64(_))
    ));
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert!(matches!(
        ReleasePolicy::decode_data(&URL_SAFE_NO_PAD.encode([0xff, 0xfe])),
        Err(ReleasePolicyError::NotUtf8)
    ));
    assert!(matches!(
        ReleasePolicy::decode_data(&URL_SAFE_NO_PAD.encode("{")),
        Err(ReleasePolicyError::Json(_))
    ));
}

#[test]
fn older_grammar_from_the_key_vault_examples_parses() {
    let text = include_str!("../../tests/data/keyvault-7.4-release-policy-older-grammar.json");
    let p = ReleasePolicy::parse_json(text).unwrap();
    assert_eq!(p.version, None);
    assert_eq!(p.any_of.len(), 1);
    assert_eq!(p.any_of[0].authority, "http://localhost:8023/");
    assert_eq!(
        p.any_of[0].conditions,
        Conditions::AllOf(vec![
            ClaimEquals::string(
                "x-ms-sgx-mrsigner",
                "86788fe40448f2a12e20bf8d5e7a1c3139bc5fdc1432b370c1da3489ab649a85"
            ),
            ClaimEquals::string("x-ms-sgx-is-debuggable", "false"),
        ])
    );
    // Same meaning as its rewrite in the current grammar, claims reordered.
    let current = json!({"version": "1.0.0", "anyOf": [{"authority": "http://localhost:8023/", "allOf": [
        {"claim": "x-ms-sgx-is-debuggable", "equals": "false"},
        {"claim": "x-ms-sgx-mrsigner", "equals": "86788fe40448f2a12e20bf8d5e7a1c3139bc5fdc1432b370c1da3489ab649a85"}
    ]}]});
    assert!(p.same_meaning(&ReleasePolicy::from_value(&current).unwrap()));
    // It pins no hostdata: never acceptable as a policy we write.
    assert!(matches!(
        p.validate(),
        Err(ReleasePolicyError::WrongVersion { found: None })
    ));
    let mut versioned = p.clone();
    versioned.version = Some("1.0.0".into());
    assert!(matches!(
        versioned.validate(),
        Err(ReleasePolicyError::InvalidAuthority { index: 0, .. })
    ));
}

#[test]
fn older_grammar_of_an_aks_policy_has_the_same_meaning_as_ours() {
    let h = hash_rego(b"rego");
    let ours = ReleasePolicy::for_binding(&typical_spec(), &BTreeSet::from([h.clone()])).unwrap();
    let old = json!({"anyOf": [{"authority": format!("https://{MAA}"), "allOf": [
        {"claim": "x-ms-sevsnpvm-is-debuggable", "condition": "equals", "value": "false"},
        {"claim": "x-ms-sevsnpvm-hostdata", "condition": "equals", "value": h.as_str()},
        {"claim": "x-ms-compliance-status", "condition": "equals", "value": "azure-signed-katacc-uvm"},
        {"claim": "x-ms-attestation-type", "condition": "equals", "value": "sevsnpvm"}
    ]}]});
    let old = ReleasePolicy::from_value(&old).unwrap();
    assert!(ours.same_meaning(&old));
    assert_eq!(old.hostdata_hashes(), BTreeSet::from([h.to_string()]));
}

#[test]
fn same_meaning_ignores_order_and_duplicates_but_not_values() {
    let p = ReleasePolicy::for_binding(
        &spec(json!({
            "authority": format!("https://{MAA}"),
            "extraClaims": [{"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}]
        })),
        &hashes(&["1", "2", "3", "4"]),
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..50 {
        let mut q = p.clone();
        q.any_of.shuffle(&mut rng);
        for r in &mut q.any_of {
            if let Conditions::AllOf(c) = &mut r.conditions {
                c.shuffle(&mut rng);
            }
        }
        assert!(p.same_meaning(&q) && q.same_meaning(&p));
        // Reordering changes nothing; one changed value anywhere does.
        let i = rand::Rng::random_range(&mut rng, 0..q.any_of.len());
        let Conditions::AllOf(c) = &mut q.any_of[i].conditions else {
            unreachable!()
        };
        let j = rand::Rng::random_range(&mut rng, 0..c.len());
        c[j].equals = ClaimValue::string("changed");
        assert!(!p.same_meaning(&q));
    }
    // Duplicated entry: same meaning.
    let mut dup = p.clone();
    dup.any_of.push(p.any_of[0].clone());
    assert!(p.same_meaning(&dup));
    // One entry fewer, or one more hash: different.
    let mut fewer = p.clone();
    fewer.any_of.pop();
    assert!(!p.same_meaning(&fewer));
    // A number is not the string of that number (Key Vault's coercion is undocumented).
    let a = ReleasePolicy::from_value(
        &json!({"anyOf": [{"authority": "https://a", "allOf": [{"claim": "v", "equals": "0"}]}]}),
    )
    .unwrap();
    let b = ReleasePolicy::from_value(
        &json!({"anyOf": [{"authority": "https://a", "allOf": [{"claim": "v", "equals": 0}]}]}),
    )
    .unwrap();
    assert!(!a.same_meaning(&b));
    // allOf of two claims is not anyOf of the same two; a single claim means the same either way.
    let two = |k: &str| {
        ReleasePolicy::from_value(&json!({"anyOf": [{"authority": "https://a", k: [{"claim": "v", "equals": true}, {"claim": "w", "equals": 1}]}]})).unwrap()
    };
    assert!(!two("allOf").same_meaning(&two("anyOf")));
    let one = |k: &str| {
        ReleasePolicy::from_value(
            &json!({"anyOf": [{"authority": "https://a", k: [{"claim": "v", "equals": true}]}]}),
        )
        .unwrap()
    };
    assert!(one("allOf").same_meaning(&one("anyOf")));
    // Authorities compare exactly.
    let slash = ReleasePolicy::from_value(
        &json!({"anyOf": [{"authority": "https://a/", "allOf": [{"claim": "v", "equals": "0"}]}]}),
    )
    .unwrap();
    assert!(!a.same_meaning(&slash));
}

#[test]
fn builder_refuses_what_would_break_the_invariants() {
    assert!(matches!(
        ReleasePolicy::for_binding(&typical_spec(), &BTreeSet::new()),
        Err(ReleasePolicyError::NoHashes)
    ));
    for authority in [
        "http://sharedeus.eus.attest.azure.net",
        "https://",
        "sharedeus.eus.attest.azure.net",
        "https://a/b",
        "https://a:99999x",
    ] {
        let e = ReleasePolicy::for_binding(&spec(json!({"authority": authority})), &hashes(&["p"]))
            .unwrap_err();
        assert!(
            matches!(e, ReleasePolicyError::InvalidAuthority { .. }),
            "{authority}: {e}"
        );
    }
    for pinned in ckb_crds::schema::PINNED_CLAIMS {
        let s = spec(json!({
            "authority": format!("https://{MAA}"),
            "extraClaims": [{"claim": pinned, "equals": "x"}]
        }));
        let e = ReleasePolicy::for_binding(&s, &hashes(&["p"])).unwrap_err();
        assert!(
            matches!(&e, ReleasePolicyError::PinnedExtraClaim { claim } if claim == pinned),
            "{e}"
        );
    }
    let s = spec(json!({"authority": format!("https://{MAA}"), "complianceStatus": ""}));
    let e = ReleasePolicy::for_binding(&s, &hashes(&["p"])).unwrap_err();
    assert!(
        matches!(
            e,
            ReleasePolicyError::WrongClaimValue {
                claim: CLAIM_COMPLIANCE_STATUS,
                ..
            }
        ),
        "{e}"
    );
    let s = spec(
        json!({"authority": format!("https://{MAA}"), "extraClaims": [
        {"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}, {"claim": "x-ms-sevsnpvm-vmpl", "equals": "1"}]}),
    );
    let e = ReleasePolicy::for_binding(&s, &hashes(&["p"])).unwrap_err();
    assert!(
        matches!(e, ReleasePolicyError::DuplicateClaim { .. }),
        "{e}"
    );
}

/// A valid policy for the typical binding, to break one way at a time.
fn valid_policy() -> ReleasePolicy {
    let good = ReleasePolicy::for_binding(&typical_spec(), &hashes(&["p", "q"])).unwrap();
    good.validate().unwrap();
    good
}

#[test]
fn validate_refuses_policies_missing_a_pin() {
    let good = valid_policy();

    let drop_claim = |claim: &str| {
        let mut p = good.clone();
        if let Conditions::AllOf(c) = &mut p.any_of[1].conditions {
            c.retain(|c| c.claim != claim);
        }
        p
    };
    for claim in [
        CLAIM_HOSTDATA,
        CLAIM_ATTESTATION_TYPE,
        CLAIM_COMPLIANCE_STATUS,
    ] {
        let e = drop_claim(claim).validate().unwrap_err();
        assert!(
            matches!(&e, ReleasePolicyError::MissingClaim { index: 1, claim: c } if *c == claim),
            "{claim}: {e}"
        );
        assert!(e.to_string().contains(claim));
    }
    // Debuggable is optional (allowDebuggable).
    drop_claim(CLAIM_IS_DEBUGGABLE).validate().unwrap();
}

#[test]
fn validate_refuses_a_policy_of_the_wrong_shape() {
    let good = valid_policy();
    let mut p = good.clone();
    p.any_of.clear();
    assert!(matches!(p.validate(), Err(ReleasePolicyError::EmptyAnyOf)));

    let mut p = good.clone();
    p.any_of[0].authority = String::new();
    assert!(matches!(
        p.validate(),
        Err(ReleasePolicyError::InvalidAuthority { index: 0, .. })
    ));

    let mut p = good.clone();
    let claims = p.any_of[0].conditions.claims().to_vec();
    p.any_of[0].conditions = Conditions::AnyOf(claims);
    assert!(matches!(
        p.validate(),
        Err(ReleasePolicyError::NotAllOf { index: 0 })
    ));

    let mut p = good.clone();
    p.any_of[0].conditions = Conditions::AllOf(vec![]);
    assert!(matches!(
        p.validate(),
        Err(ReleasePolicyError::MissingClaim { index: 0, .. })
    ));

    let mut p = good.clone();
    p.version = Some("0.2".into());
    assert!(matches!(
        p.validate(),
        Err(ReleasePolicyError::WrongVersion { .. })
    ));
}

#[test]
fn validate_refuses_wrong_claim_values() {
    let good = valid_policy();
    let set = |claim: &str, v: ClaimValue| {
        let mut p = good.clone();
        if let Conditions::AllOf(c) = &mut p.any_of[0].conditions {
            c.iter_mut()
                .filter(|c| c.claim == claim)
                .for_each(|c| c.equals = v.clone());
        }
        p.validate()
    };
    for bad in [
        ClaimValue::string("ABC"),
        ClaimValue::string(""),
        ClaimValue::Bool(true),
    ] {
        assert!(matches!(
            set(CLAIM_HOSTDATA, bad),
            Err(ReleasePolicyError::WrongClaimValue {
                claim: CLAIM_HOSTDATA,
                ..
            })
        ));
    }
    assert!(matches!(
        set(CLAIM_ATTESTATION_TYPE, ClaimValue::string("sgx")),
        Err(ReleasePolicyError::WrongClaimValue {
            claim: CLAIM_ATTESTATION_TYPE,
            ..
        })
    ));
}

#[test]
fn parser_refuses_what_it_does_not_understand() {
    let cases = [
        (r#"[]"#, "must be an object"),
        (r#"{"version":"1.0.0"}"#, "missing anyOf"),
        (r#"{"allOf":[]}"#, "found allOf"),
        (r#"{"anyOf":[],"extra":1}"#, "unknown member \"extra\""),
        (r#"{"anyOf":{}}"#, "must be an array"),
        (r#"{"anyOf":[{"allOf":[]}]}"#, "missing authority"),
        (
            r#"{"anyOf":[{"authority":"https://a"}]}"#,
            "missing allOf or anyOf",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[],"anyOf":[]}]}"#,
            "both allOf and anyOf",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"claim":"c","contains":"x"}]}]}"#,
            "unsupported operator \"contains\"",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"claim":"c","condition":"notEquals","value":"x"}]}]}"#,
            "unsupported operator \"notEquals\"",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"anyOf":[{"claim":"c","equals":"x"}]}]}]}"#,
            "nested allOf/anyOf",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":{"a":1}}]}]}"#,
            "not an object",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":["a"]}]}]}"#,
            "not an array",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":null}]}]}"#,
            "not null",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"claim":"c"}]}]}"#,
            "has no equals",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"equals":"x"}]}]}"#,
            "missing claim",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":"x","condition":"equals","value":"x"}]}]}"#,
            "mixes equals",
        ),
        (
            r#"{"anyOf":[{"authority":"https://a","allOf":[{"claim":"c","condition":"equals"}]}]}"#,
            "no value",
        ),
        (
            r#"{"anyOf":[{"authority":1,"allOf":[]}]}"#,
            "anyOf[0].authority: must be a string",
        ),
        ("{", "not JSON"),
    ];
    for (text, expected) in cases {
        let e = ReleasePolicy::parse_json(text).unwrap_err().to_string();
        assert!(e.contains(expected), "{text}: {e:?} lacks {expected:?}");
    }
    // Paths point at the offending condition.
    let e = ReleasePolicy::parse_json(
        r#"{"anyOf":[{"authority":"https://a","allOf":[]},{"authority":"https://a","anyOf":[{"claim":"a","equals":1},{"claim":"c","equals":null}]}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("anyOf[1].anyOf[1].equals"), "{e}");
}

#[test]
fn any_policy_of_the_grammar_survives_json_and_base64url() {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(2024);
    let texts = ["", "0", "false", "sevsnpvm", "ü\"\\/\n", "https://x"];
    for _ in 0..300 {
        let entries = rng.random_range(0..4);
        let any_of = (0..entries)
            .map(|i| {
                let claims = (0..rng.random_range(0..5))
                    .map(|j| {
                        // NB: integers only. Fractional numbers go through f64, and serde_json's
                        // fast float parser may move the last digit on a round trip (see
                        // `ClaimValue::Number`); no claim a release policy pins is fractional.
                        let equals = match rng.random_range(0..3) {
                            0 => ClaimValue::Bool(rng.random()),
                            1 => ClaimValue::Number(rng.random_range(-5i64..1000).into()),
                            _ => ClaimValue::string(texts[rng.random_range(0..texts.len())]),
                        };
                        ClaimEquals {
                            claim: format!("claim-{j}.nested"),
                            equals,
                        }
                    })
                    .collect();
                AuthorityRule {
                    conditions: if rng.random() {
                        Conditions::AllOf(claims)
                    } else {
                        Conditions::AnyOf(claims)
                    },
                    authority: format!("https://maa{i}.example"),
                }
            })
            .collect();
        let p = ReleasePolicy {
            any_of,
            version: rng.random::<bool>().then(|| "1.0.0".to_owned()),
        };
        let back = ReleasePolicy::parse_json(&p.to_json()).unwrap();
        assert_eq!(back, p, "{}", p.to_json());
        assert!(back.same_meaning(&p));
        assert_eq!(ReleasePolicy::decode_data(&p.encoded()).unwrap(), p);
    }
}
