//! Tests of the cluster's bounds on what a binding may ask for.

use super::*;
use serde_json::json;

const VAULT: &str = "https://demo.vault.azure.net";
const SHARED: &str = "https://sharedeus.eus.attest.azure.net";
const ATTACKER: &str = "https://attacker.example.com:8443";

fn binding(ns: &str, patch: serde_json::Value) -> ConfidentialKeyBinding {
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": "orders"}},
        "key": {"vault": VAULT, "name": "payments-orders", "type": "RSA-HSM"},
        "attestation": {"authority": SHARED},
        "policy": {"configMapRef": {"name": "orders-policy"}}
    });
    merge(&mut spec, patch);
    let mut b = ConfidentialKeyBinding::new("orders", serde_json::from_value(spec).unwrap());
    b.metadata.namespace = Some(ns.into());
    b
}

fn merge(into: &mut serde_json::Value, patch: serde_json::Value) {
    match (into, patch) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn grant(name: &str, patch: serde_json::Value) -> Arc<ConfidentialKeyGrant> {
    let mut spec = json!({
        "vault": VAULT,
        "namespaces": {"names": ["payments"]},
        "keyNamePrefix": "{namespace}-",
        "attestation": {"authorities": [SHARED]}
    });
    merge(&mut spec, patch);
    Arc::new(ConfidentialKeyGrant::new(
        name,
        serde_json::from_value(spec).unwrap(),
    ))
}

fn allowed() -> BTreeSet<VaultUrl> {
    [VaultUrl::parse(VAULT).unwrap()].into()
}

fn simple(b: &ConfidentialKeyBinding) -> Result<Admitted, Refusal> {
    admit(
        b,
        &GrantLookup::default(),
        &allowed(),
        &ClusterBounds::default(),
    )
}

fn by_grant(b: &ConfidentialKeyBinding, g: Arc<ConfidentialKeyGrant>) -> Result<Admitted, Refusal> {
    let lookup = GrantLookup {
        grant: Some(g),
        namespace_labels: Some(BTreeMap::from([("team".into(), "pay".into())])),
    };
    admit(b, &lookup, &BTreeSet::new(), &ClusterBounds::default())
}

fn reason(r: Result<Admitted, Refusal>) -> &'static str {
    match r {
        Ok(a) => panic!("admitted: {a:?}"),
        Err(r) => {
            assert!(r.message.contains("not contacted"), "{}", r.message);
            r.reason
        }
    }
}

#[test]
fn flag_defaults_are_the_default_bounds() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BoundsArgs,
    }
    let cli = Cli::try_parse_from(["x"]).unwrap();
    assert_eq!(cli.args.bounds().unwrap(), ClusterBounds::default());
    let cli = Cli::try_parse_from([
        "x",
        "--allowed-authority",
        "https://MAA.example.com/",
        "--allow-debuggable",
        "true",
        "--kv-namespace-share",
        "10",
    ])
    .unwrap();
    let b = cli.args.bounds().unwrap();
    assert_eq!(
        b.authorities,
        ["https://maa.example.com".to_string()].into()
    );
    assert!(b.allow_debuggable);
    assert_eq!(b.namespace_share_percent, 10);
    let bad = Cli::try_parse_from(["x", "--allowed-authority", "http://maa.example.com"]).unwrap();
    assert!(bad.args.bounds().is_err());
    assert!(Cli::try_parse_from(["x", "--kv-namespace-share", "0"]).is_err());
}

#[test]
fn simple_mode_admits_the_demo_binding_with_the_default_share() {
    let a = simple(&binding("payments", json!({}))).unwrap();
    assert_eq!(a.rate_share_percent, DEFAULT_NAMESPACE_SHARE_PERCENT);
    assert_eq!(a.grant, None);
    // A trailing slash or upper case in the authority is the same authority.
    let b = binding(
        "payments",
        json!({"attestation": {"authority": "https://SharedEUS.eus.attest.azure.net/"}}),
    );
    assert!(simple(&b).is_ok());
}

#[test]
fn simple_mode_refuses_what_the_flags_do_not_allow() {
    let cases = [
        (
            json!({"key": {"vault": "https://other.vault.azure.net"}}),
            reasons::VAULT_NOT_ALLOWED,
        ),
        (
            json!({"attestation": {"authority": ATTACKER}}),
            reasons::AUTHORITY_NOT_ALLOWED,
        ),
        (
            json!({"attestation": {"complianceStatus": "anything-goes"}}),
            reasons::COMPLIANCE_STATUS_NOT_ALLOWED,
        ),
        (
            json!({"attestation": {"allowDebuggable": true}}),
            reasons::DEBUGGABLE_NOT_ALLOWED,
        ),
    ];
    for (patch, want) in cases {
        assert_eq!(
            reason(simple(&binding("payments", patch.clone()))),
            want,
            "{patch}"
        );
    }
}

#[test]
fn simple_mode_flags_widen_and_narrow() {
    let bounds = ClusterBounds {
        authorities: [normalise_authority("https://maa.example.com")].into(),
        compliance_statuses: ["azure-compliant-uvm".into()].into(),
        allow_debuggable: true,
        allow_adopt: false,
        allow_delete: false,
        ..ClusterBounds::default()
    };
    let ok = binding(
        "payments",
        json!({"attestation": {"authority": "https://maa.example.com", "complianceStatus": "azure-compliant-uvm", "allowDebuggable": true}}),
    );
    assert!(admit(&ok, &GrantLookup::default(), &allowed(), &bounds).is_ok());
    // The public authority is no longer allowed once the list is set.
    let public = binding(
        "payments",
        json!({"attestation": {"complianceStatus": "azure-compliant-uvm"}}),
    );
    assert_eq!(
        reason(admit(&public, &GrantLookup::default(), &allowed(), &bounds)),
        reasons::AUTHORITY_NOT_ALLOWED
    );
    let mut adopt = ok.clone();
    adopt.spec.key.adopt = true;
    assert_eq!(
        reason(admit(&adopt, &GrantLookup::default(), &allowed(), &bounds)),
        reasons::ADOPT_NOT_ALLOWED
    );
    let mut delete = ok.clone();
    delete.spec.key.deletion_policy = DeletionPolicy::Delete;
    assert_eq!(
        reason(admit(&delete, &GrantLookup::default(), &allowed(), &bounds)),
        reasons::DELETION_NOT_ALLOWED
    );
    let required = ClusterBounds {
        require_grant: true,
        ..ClusterBounds::default()
    };
    assert_eq!(
        reason(admit(
            &binding("payments", json!({})),
            &GrantLookup::default(),
            &allowed(),
            &required
        )),
        reasons::GRANT_REQUIRED
    );
}

#[test]
fn a_grant_admits_its_namespaces_within_its_bounds() {
    let b = binding("payments", json!({"grantRef": {"name": "payments"}}));
    let a = by_grant(&b, grant("payments", json!({"rateLimitPercent": 20}))).unwrap();
    assert_eq!(a.rate_share_percent, 20);
    assert_eq!(a.grant.as_deref(), Some("payments"));
    // A grant's vault needs no --allowed-vault entry; by label selector too.
    let other = binding(
        "billing",
        json!({"grantRef": {"name": "g"}, "key": {"name": "billing-k"}}),
    );
    let g = grant(
        "g",
        json!({"namespaces": {"names": [], "selector": {"matchLabels": {"team": "pay"}}}}),
    );
    assert!(by_grant(&other, g).is_ok());
}

#[test]
fn a_grant_refuses_everything_it_does_not_allow() {
    let g = grant("payments", json!({"keyTypes": ["EC-HSM", "RSA-HSM"]}));
    let with = |patch: serde_json::Value| {
        let mut p = json!({"grantRef": {"name": "payments"}});
        merge(&mut p, patch);
        binding("payments", p)
    };
    let cases = [
        (
            json!({"key": {"vault": "https://other.vault.azure.net"}}),
            reasons::VAULT_NOT_ALLOWED,
        ),
        (
            json!({"attestation": {"authority": ATTACKER}}),
            reasons::AUTHORITY_NOT_ALLOWED,
        ),
        (
            json!({"attestation": {"complianceStatus": "azure-compliant-uvm"}}),
            reasons::COMPLIANCE_STATUS_NOT_ALLOWED,
        ),
        (
            json!({"attestation": {"allowDebuggable": true}}),
            reasons::DEBUGGABLE_NOT_ALLOWED,
        ),
        (
            json!({"key": {"name": "billing-orders"}}),
            reasons::KEY_NAME_NOT_ALLOWED,
        ),
        (
            json!({"key": {"type": "oct-HSM"}}),
            reasons::KEY_TYPE_NOT_ALLOWED,
        ),
        (json!({"key": {"adopt": true}}), reasons::ADOPT_NOT_ALLOWED),
        (
            json!({"key": {"deletionPolicy": "Delete"}}),
            reasons::DELETION_NOT_ALLOWED,
        ),
        (
            json!({"grantRef": {"name": "nope"}}),
            reasons::GRANT_NOT_FOUND,
        ),
    ];
    for (patch, want) in cases {
        assert_eq!(
            reason(by_grant(&with(patch.clone()), g.clone())),
            want,
            "{patch}"
        );
    }
    // Another namespace, not listed and not matched by labels.
    let elsewhere = binding(
        "billing",
        json!({"grantRef": {"name": "payments"}, "key": {"name": "billing-x"}}),
    );
    assert_eq!(
        reason(by_grant(&elsewhere, g.clone())),
        reasons::NAMESPACE_NOT_GRANTED
    );
    // No grant at all.
    let none = admit(
        &with(json!({})),
        &GrantLookup::default(),
        &allowed(),
        &ClusterBounds::default(),
    );
    assert_eq!(reason(none), reasons::GRANT_NOT_FOUND);
    // What the grant allows, it allows.
    let wide = grant(
        "payments",
        json!({"allowAdopt": true, "allowDelete": true, "attestation": {"allowDebuggable": true, "authorities": [SHARED, ATTACKER]}}),
    );
    let everything = with(
        json!({"key": {"adopt": true, "deletionPolicy": "Delete"}, "attestation": {"allowDebuggable": true, "authority": ATTACKER}}),
    );
    assert!(by_grant(&everything, wide).is_ok());
}

#[test]
fn a_selector_never_matches_an_unknown_namespace() {
    let g = grant("g", json!({"namespaces": {"names": [], "selector": {}}}));
    let b = binding("payments", json!({"grantRef": {"name": "g"}}));
    let unknown = GrantLookup {
        grant: Some(g.clone()),
        namespace_labels: None,
    };
    assert_eq!(
        reason(admit(
            &b,
            &unknown,
            &BTreeSet::new(),
            &ClusterBounds::default()
        )),
        reasons::NAMESPACE_NOT_GRANTED
    );
    let known = GrantLookup {
        grant: Some(g),
        namespace_labels: Some(BTreeMap::new()),
    };
    assert!(admit(&b, &known, &BTreeSet::new(), &ClusterBounds::default()).is_ok());
}
