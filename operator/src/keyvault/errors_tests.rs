//! Tests of `keyvault/errors.rs`.

use super::*;

fn failure(status: u16, body: &str) -> HttpFailure {
    HttpFailure::from_parts(status, body.as_bytes(), None)
}

#[test]
fn reads_the_service_error_body() {
    let f = failure(
        409,
        r#"{"error":{"code":"Conflict","message":"Key k1 is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can be recovered or purged.","innererror":{"code":"ObjectIsDeletedButRecoverable"}}}"#,
    );
    assert_eq!(f.code.as_deref(), Some("Conflict"));
    assert_eq!(
        f.inner_code.as_deref(),
        Some("ObjectIsDeletedButRecoverable")
    );
    assert!(f.message.starts_with("Key k1 is currently"));
}

#[test]
fn not_found_deleted_conflict_forbidden_invalid() {
    let nf = classify_http(
        &failure(
            404,
            r#"{"error":{"code":"KeyNotFound","message":"A key with (name/id) k1 was not found in this key vault."}}"#,
        ),
        CallKind::Read,
    );
    assert_eq!(
        nf,
        KeyVaultError::NotFound {
            message: "A key with (name/id) k1 was not found in this key vault. (KeyNotFound)"
                .into()
        }
    );
    let deleted = classify_http(
        &failure(
            409,
            r#"{"error":{"code":"Conflict","message":"x","innererror":{"code":"ObjectIsDeletedButRecoverable"}}}"#,
        ),
        CallKind::Write,
    );
    assert!(
        matches!(deleted, KeyVaultError::DeletedRecoverable { .. }),
        "{deleted:?}"
    );
    let conflict = classify_http(
        &failure(
            409,
            r#"{"error":{"code":"Conflict","message":"There was a conflict."}}"#,
        ),
        CallKind::Write,
    );
    assert!(
        matches!(conflict, KeyVaultError::Conflict { .. }),
        "{conflict:?}"
    );
    for status in [401, 403] {
        let f = classify_http(
            &failure(
                status,
                r#"{"error":{"code":"Forbidden","message":"Caller is not authorized.","innererror":{"code":"ForbiddenByRbac"}}}"#,
            ),
            CallKind::Read,
        );
        assert_eq!(
            f,
            KeyVaultError::Forbidden {
                status,
                message: "Caller is not authorized. (Forbidden/ForbiddenByRbac)".into()
            }
        );
    }
    let bad = classify_http(
        &failure(
            400,
            r#"{"error":{"code":"BadParameter","message":"Invalid key size."}}"#,
        ),
        CallKind::Write,
    );
    assert!(
        matches!(bad, KeyVaultError::InvalidRequest { ref message } if message.contains("Invalid key size"))
    );
}

#[test]
fn an_immutable_policy_refusal_is_recognised_on_writes() {
    let body = r#"{"error":{"code":"BadParameter","message":"The release policy of this key is immutable and cannot be changed."}}"#;
    for status in [400, 403, 409] {
        assert!(matches!(
            classify_http(&failure(status, body), CallKind::Update),
            KeyVaultError::ImmutablePolicy { .. }
        ));
    }
    assert!(matches!(
        classify_http(&failure(400, body), CallKind::Write),
        KeyVaultError::ImmutablePolicy { .. }
    ));
    assert!(matches!(
        classify_http(&failure(400, body), CallKind::Read),
        KeyVaultError::InvalidRequest { .. }
    ));
}

#[test]
fn throttled_carries_the_delay_or_one_window() {
    let f = HttpFailure::from_parts(429, b"", Some(Duration::from_millis(2500)));
    assert_eq!(
        classify_http(&f, CallKind::Read),
        KeyVaultError::Throttled {
            retry_after: Duration::from_millis(2500),
            message: "HTTP 429 with no message".into()
        }
    );
    let f = HttpFailure::from_parts(429, b"", None);
    assert!(matches!(
        classify_http(&f, CallKind::Read),
        KeyVaultError::Throttled { retry_after, .. } if retry_after == DEFAULT_RETRY_AFTER
    ));
}

#[test]
fn server_errors_leave_writes_unknown_and_reads_known() {
    let f = failure(503, "upstream unavailable");
    assert_eq!(
        classify_http(&f, CallKind::Read),
        KeyVaultError::Transient {
            message: "upstream unavailable".into(),
            outcome_unknown: false
        }
    );
    assert!(matches!(
        classify_http(&f, CallKind::Write),
        KeyVaultError::Transient {
            outcome_unknown: true,
            ..
        }
    ));
    assert!(matches!(
        classify_http(&failure(408, ""), CallKind::Write),
        KeyVaultError::Transient {
            outcome_unknown: false,
            ..
        }
    ));
}

#[test]
fn transport_failures() {
    let m = || "reset".to_string();
    assert_eq!(
        classify_transport(TransportFailure::Connect, CallKind::Write, m()),
        KeyVaultError::Transient {
            message: m(),
            outcome_unknown: false
        }
    );
    assert_eq!(
        classify_transport(TransportFailure::AfterSend, CallKind::Write, m()),
        KeyVaultError::Transient {
            message: m(),
            outcome_unknown: true
        }
    );
    assert_eq!(
        classify_transport(TransportFailure::AfterSend, CallKind::Read, m()),
        KeyVaultError::Transient {
            message: m(),
            outcome_unknown: false
        }
    );
}

#[test]
fn retry_after_headers_in_order_of_precedence() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_609_459_200); // 2021-01-01T00:00:00Z
    let h = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    };
    assert_eq!(
        retry_after(
            h(&[("x-ms-retry-after-ms", "1500"), ("retry-after", "9")]),
            now
        ),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        retry_after(h(&[("retry-after-ms", "250"), ("retry-after", "9")]), now),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        retry_after(h(&[("retry-after", "9")]), now),
        Some(Duration::from_secs(9))
    );
    assert_eq!(
        retry_after(h(&[("retry-after", "Fri, 01 Jan 2021 00:00:12 GMT")]), now),
        Some(Duration::from_secs(12))
    );
    assert_eq!(
        retry_after(h(&[("retry-after", "Thu, 31 Dec 2020 23:59:00 GMT")]), now),
        Some(Duration::ZERO)
    );
    assert_eq!(retry_after(h(&[("retry-after", "soon")]), now), None);
    assert_eq!(retry_after(h(&[]), now), None);
}
