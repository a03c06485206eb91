//! Tests of `keyvault/metrics.rs`.

use super::*;

#[test]
fn exposes_the_documented_names() {
    let metrics = KeyVaultMetrics::default();
    metrics
        .requests
        .get_or_create(&CallLabels {
            operation: "get".into(),
            outcome: "ok".into(),
        })
        .inc();
    metrics
        .throttled
        .get_or_create(&VaultLabels {
            vault: "a.vault.azure.net".into(),
        })
        .inc();
    metrics
        .duration
        .get_or_create(&OperationLabels {
            operation: "get".into(),
        })
        .observe(0.02);
    metrics
        .limiter_wait
        .get_or_create(&OperationLabels {
            operation: "create".into(),
        })
        .observe(1.5);
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(r#"ckb_keyvault_requests_total{operation="get",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ckb_keyvault_throttled_total{vault="a.vault.azure.net"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ckb_keyvault_request_duration_seconds_count{operation="get"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ckb_keyvault_rate_limit_wait_seconds_sum{operation="create"} 1.5"#),
        "{text}"
    );
    assert_eq!(metrics.requests_count("get", "ok"), 1);
}
