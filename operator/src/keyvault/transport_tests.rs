//! Tests of `keyvault/transport.rs`.

use super::*;

#[test]
fn parses_host_and_suffix_overrides() {
    let exact: ResolveOverride = "Demo.vault.azure.net=127.0.0.1:8443".parse().expect("ok");
    assert_eq!(
        exact.pattern,
        HostPattern::Exact("demo.vault.azure.net".into())
    );
    assert_eq!(exact.addr, "127.0.0.1:8443".parse().expect("addr"));
    let suffix: ResolveOverride = ".vault.azure.net=[::1]:9000".parse().expect("ok");
    assert_eq!(
        suffix.pattern,
        HostPattern::Suffix(".vault.azure.net".into())
    );
    for bad in [
        "demo.vault.azure.net",
        "=127.0.0.1:1",
        "demo=localhost:1",
        "demo=127.0.0.1",
        "https://demo=127.0.0.1:1",
        ".=127.0.0.1:1",
    ] {
        assert!(
            bad.parse::<ResolveOverride>().is_err(),
            "{bad} must be refused"
        );
    }
}

#[test]
fn matching() {
    let o: Vec<ResolveOverride> = vec![
        "a.vault.azure.net=127.0.0.1:1".parse().expect("ok"),
        ".managedhsm.azure.net=127.0.0.1:2".parse().expect("ok"),
    ];
    assert_eq!(
        find_override(&o, "A.vault.azure.net").map(|o| o.addr.port()),
        Some(1)
    );
    assert_eq!(find_override(&o, "b.vault.azure.net"), None);
    assert_eq!(
        find_override(&o, "h.managedhsm.azure.net").map(|o| o.addr.port()),
        Some(2)
    );
    // A suffix does not match itself nor a longer label ending in the same text.
    assert_eq!(find_override(&o, "managedhsm.azure.net"), None);
    assert_eq!(find_override(&o, "evilmanagedhsm.azure.net"), None);
}

#[test]
fn an_empty_ca_file_is_refused() {
    let settings = TransportSettings {
        ca_pem: Some(b"not a certificate".to_vec()),
        ..Default::default()
    };
    assert!(matches!(
        http_client(&settings),
        Err(TransportError::CaFile { .. })
    ));
}
