//! The certificate plan and its application, at chosen times.

use super::*;

fn hosts() -> Vec<String> {
    vec![
        "ckb-operator-webhook.ckb-system.svc".into(),
        "127.0.0.1".into(),
    ]
}

fn fresh(now: Timestamp, t: &CertTimings) -> TlsMaterial {
    let empty = TlsMaterial::default();
    let steps = plan(&empty, &hosts(), now, t);
    assert_eq!(steps[0], Step::NewCa);
    apply(&empty, &steps, &hosts(), now, t).unwrap()
}

fn days(n: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_hours(24 * n)
}

#[test]
fn fresh_material_is_complete_and_then_stable() {
    let t = CertTimings::default();
    let now = Timestamp::now();
    let m = fresh(now, &t);
    let ca = cert_info(&m.ca_crt).unwrap();
    let leaf = cert_info(&m.tls_crt).unwrap();
    assert_eq!(leaf.issuer_cn, ca.subject_cn);
    let mut sans = leaf.sans.clone();
    sans.sort();
    assert_eq!(
        sans,
        vec![
            "127.0.0.1".to_string(),
            "ckb-operator-webhook.ckb-system.svc".into()
        ]
    );
    assert_eq!(pem_certs(&m.ca_bundle), pem_certs(&m.ca_crt));
    assert!(plan(&m, &hosts(), now, &t).is_empty());
    // A day later, nothing to do either.
    assert!(plan(&m, &hosts(), now + days(1), &t).is_empty());
    // The Secret round trip keeps everything.
    let s = Secret {
        data: Some(m.to_data()),
        ..Default::default()
    };
    assert_eq!(TlsMaterial::from_secret(&s), m);
}

#[test]
fn serving_certificate_is_renewed_before_expiry_and_on_new_names() {
    let t = CertTimings::default();
    let now = Timestamp::now();
    let m = fresh(now, &t);
    let later = now + days(61);
    let steps = plan(&m, &hosts(), later, &t);
    assert!(
        matches!(steps.as_slice(), [Step::IssueServing(_)]),
        "{steps:?}"
    );
    let mut other = hosts();
    other.push("extra.example".into());
    let steps = plan(&m, &other, now, &t);
    assert!(
        matches!(steps.as_slice(), [Step::IssueServing(r)] if r.contains("names")),
        "{steps:?}"
    );
    let renewed = apply(&m, &steps, &other, now, &t).unwrap();
    assert!(plan(&renewed, &other, now, &t).is_empty());
    assert_eq!(renewed.ca_crt, m.ca_crt, "the CA is kept");
}

#[test]
fn ca_rotates_in_two_phases_and_the_old_ca_stays_trusted_until_it_expires() {
    let t = CertTimings::default();
    let start = Timestamp::now();
    let m = fresh(start, &t);
    let old_ca = pem_certs(&m.ca_crt)[0].clone();
    // 4.2 years later (less than a year left): the next CA joins the bundle.
    let t1 = start + days(1533);
    let steps = plan(&m, &hosts(), t1, &t);
    assert!(steps.contains(&Step::IntroduceNextCa), "{steps:?}");
    let m1 = apply(&m, &steps, &hosts(), t1, &t).unwrap();
    assert_eq!(m1.ca_crt, m.ca_crt, "the old CA still signs");
    assert_eq!(pem_certs(&m1.ca_bundle).len(), 2);
    // Half an hour later: not yet promoted.
    let t2 = t1 + jiff::SignedDuration::from_mins(30);
    assert!(!plan(&m1, &hosts(), t2, &t).contains(&Step::PromoteNextCa));
    // Over an hour later: promoted, new serving certificate from the new CA, both trusted.
    let t3 = t1 + jiff::SignedDuration::from_mins(61);
    let steps = plan(&m1, &hosts(), t3, &t);
    assert!(steps.contains(&Step::PromoteNextCa), "{steps:?}");
    let m2 = apply(&m1, &steps, &hosts(), t3, &t).unwrap();
    assert_eq!(m2.ca_crt, m1.ca_next_crt);
    assert!(m2.ca_next_crt.is_empty());
    assert_eq!(
        cert_info(&m2.tls_crt).unwrap().issuer_cn,
        cert_info(&m2.ca_crt).unwrap().subject_cn
    );
    let bundle = pem_certs(&m2.ca_bundle);
    assert_eq!(bundle.len(), 2);
    assert!(bundle.contains(&old_ca));
    assert!(plan(&m2, &hosts(), t3, &t).is_empty());
    // After the old CA expired, it leaves the bundle.
    let t4 = start + days(5 * 365 + 1);
    let steps = plan(&m2, &hosts(), t4, &t);
    assert!(steps.contains(&Step::RebuildBundle), "{steps:?}");
    let m3 = apply(&m2, &steps, &hosts(), t4, &t).unwrap();
    assert!(!pem_certs(&m3.ca_bundle).contains(&old_ca));
}

#[test]
fn unreadable_or_expired_material_starts_over() {
    let t = CertTimings::default();
    let now = Timestamp::now();
    let garbage = TlsMaterial {
        ca_crt: "not a cert".into(),
        ca_key: "nope".into(),
        tls_crt: "x".into(),
        ..Default::default()
    };
    assert_eq!(plan(&garbage, &hosts(), now, &t)[0], Step::NewCa);
    let m = fresh(now, &t);
    assert_eq!(plan(&m, &hosts(), now + days(6 * 365), &t)[0], Step::NewCa);
    // A serving key that does not parse is re-issued.
    let mut bad_key = m.clone();
    bad_key.tls_key = "garbage".into();
    assert!(matches!(
        plan(&bad_key, &hosts(), now, &t).as_slice(),
        [Step::IssueServing(_)]
    ));
}
