//! Tests of `keyvault/mod.rs`.

use super::*;
use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    kv: KeyVaultArgs,
}

#[test]
fn vault_urls_are_normalised_and_checked() {
    let v = VaultUrl::parse(" https://Demo.Vault.Azure.NET/ ").expect("parses");
    assert_eq!(v.as_str(), "https://demo.vault.azure.net");
    assert_eq!(
        (v.host(), v.host_name()),
        ("demo.vault.azure.net", "demo.vault.azure.net")
    );
    assert!(v.is_azure() && !v.is_managed_hsm());
    let v = VaultUrl::parse("https://localhost:8443").expect("parses");
    assert_eq!((v.host(), v.host_name()), ("localhost:8443", "localhost"));
    assert!(!v.is_azure());
    let hsm = VaultUrl::parse("https://h.managedhsm.azure.net:443").expect("parses");
    assert_eq!(hsm.as_str(), "https://h.managedhsm.azure.net");
    assert!(hsm.is_managed_hsm() && hsm.is_azure());
    for bad in [
        "http://demo.vault.azure.net",
        "demo.vault.azure.net",
        "https://demo.vault.azure.net/keys",
        "https://demo.vault.azure.net?x=1",
        "https://user@demo.vault.azure.net",
        "https://",
    ] {
        assert!(VaultUrl::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn flags_and_defaults() {
    let cli = Cli::try_parse_from(["x"]).expect("defaults parse");
    assert_eq!(cli.kv.credential, None);
    assert_eq!((cli.kv.create_limit, cli.kv.other_limit), (10, 100));
    assert_eq!(cli.kv.max_wait, Duration::from_secs(30));
    let cli = Cli::try_parse_from([
        "x",
        "--kv-credential",
        "static-token",
        "--kv-resolve",
        ".vault.azure.net=127.0.0.1:8443,localhost=127.0.0.1:9",
        "--kv-resolve",
        "h.managedhsm.azure.net=127.0.0.1:7",
        "--kv-create-limit",
        "3",
    ])
    .expect("parses");
    assert_eq!(cli.kv.credential, Some(CredentialKind::StaticToken));
    assert_eq!(cli.kv.resolve.len(), 3);
    assert_eq!(cli.kv.create_limit, 3);
    assert!(Cli::try_parse_from(["x", "--kv-create-limit", "0"]).is_err());
    assert!(Cli::try_parse_from(["x", "--kv-resolve", "nonsense"]).is_err());
}
