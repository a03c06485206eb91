//! The Key Vault client suite against Lowkey Vault, a third-party Key Vault emulator (Java), for the
//! operations it implements: get, create without release policy, tags, delete, get-deleted,
//! recover, and its own 401 challenge (`resource=` + `authorization_uri=` instead of Key Vault's
//! `authorization=`).
//!
//! The test starts Lowkey itself (one JVM for the whole suite, on a free port, with a throw-away TLS
//! key store made by `keytool`), polls until it answers, and stops it at the end. It needs `java`
//! (17+) and the `lowkey-vault-app` 3.4.x jar: `CKB_LOWKEY_JAR`, else the one
//! `scripts/install-tools.sh lowkey` installs (`${XDG_CACHE_HOME:-$HOME/.cache}/ckb-operator/tools/
//! lowkey-vault/lowkey-vault-app.jar`), else the newest `lowkey-vault-app-*.jar` in that tools folder. When either is
//! missing the test fails and says what to install; it is `#[ignore]`d in the default run because
//! the jar is not in every build environment: run it with
//! `cargo test -p ckb-operator --test keyvault_lowkey -- --ignored`.

mod keyvault_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ckb_operator::keyvault::client::ClientConfig;
use ckb_operator::keyvault::transport::TransportSettings;
use ckb_operator::keyvault::{AzureKeyVault, KeyVault, KeyVaultError, RateLimits, VaultUrl};
use keyvault_common::{Capabilities, static_token};

const LOWKEY: Capabilities = Capabilities {
    release_policy: false,
    hsm: false,
};

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("ckb-operator/tools")
}

fn find_jar() -> Result<PathBuf, String> {
    if let Some(jar) = std::env::var_os("CKB_LOWKEY_JAR") {
        let jar = PathBuf::from(jar);
        return if jar.is_file() {
            Ok(jar)
        } else {
            Err(format!("CKB_LOWKEY_JAR={} is not a file", jar.display()))
        };
    }
    let dir = cache_dir();
    // Where `scripts/install-tools.sh lowkey` puts it.
    let installed = dir.join("lowkey-vault/lowkey-vault-app.jar");
    if installed.is_file() {
        return Ok(installed);
    }
    let mut jars: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("lowkey-vault-app-") && n.ends_with(".jar"))
                })
                .collect()
        })
        .unwrap_or_default();
    jars.sort();
    jars.pop().ok_or_else(|| {
        format!(
            "Lowkey Vault jar not found: run scripts/install-tools.sh lowkey, or set CKB_LOWKEY_JAR, \
             or put lowkey-vault-app-3.4.x.jar in {} (Maven Central \
             com.github.nagyesta.lowkey-vault:lowkey-vault-app)",
            dir.display()
        )
    })
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e} (is Java 17+ installed?)"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// A PKCS#12 key store for localhost, and its certificate as PEM (the root the client trusts).
fn key_store(dir: &Path) -> Result<(PathBuf, Vec<u8>), String> {
    let store = dir.join("lowkey.p12");
    run(Command::new("keytool")
        .args([
            "-genkeypair",
            "-alias",
            "lowkey",
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-validity",
            "2",
            "-dname",
            "CN=localhost",
            "-ext",
            "SAN=dns:localhost,ip:127.0.0.1",
            "-storetype",
            "PKCS12",
            "-storepass",
            "changeit",
            "-keypass",
            "changeit",
            "-keystore",
        ])
        .arg(&store))?;
    let pem = run(Command::new("keytool")
        .args([
            "-exportcert",
            "-rfc",
            "-alias",
            "lowkey",
            "-storepass",
            "changeit",
            "-keystore",
        ])
        .arg(&store))?;
    Ok((store, pem))
}

struct Lowkey {
    child: Child,
    port: u16,
}

impl Drop for Lowkey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Lowkey on a free port. Lowkey names its default vaults after `server.port`
/// (`https://localhost:<port>`), so the port is chosen here rather than left to the server.
fn start_lowkey(jar: &Path, store: &Path, log: &Path) -> Result<Lowkey, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let out = std::fs::File::create(log).map_err(|e| format!("log file: {e}"))?;
    let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
    let child = Command::new("java")
        .arg("-jar")
        .arg(jar)
        .arg(format!("--server.port={port}"))
        .arg(format!("--server.ssl.key-store={}", store.display()))
        .args([
            "--server.ssl.key-store-type=PKCS12",
            "--server.ssl.key-store-password=changeit",
            "--server.ssl.key-alias=lowkey",
        ])
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("cannot start java: {e} (is Java 17+ installed?)"))?;
    Ok(Lowkey { child, port })
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[tokio::test]
#[ignore = "needs Java 17 and the Lowkey Vault jar; run with --ignored (see the file's doc)"]
async fn lowkey_suite() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let jar = find_jar().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, pem) = key_store(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("lowkey.log");
    let mut lowkey = start_lowkey(&jar, &store, &log).unwrap_or_else(|e| panic!("{e}"));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "lowkey-accepts-any-token").expect("token");

    // Lowkey names its default vault after the host and port it is reached on; the override keeps
    // the name and sends it to 127.0.0.1 (and turns the SDK's challenge-resource check off, since
    // Lowkey's `resource` is not a parent domain of `localhost`).
    let port = lowkey.port;
    let kv = AzureKeyVault::new(ClientConfig {
        credential: static_token(token_file),
        transport: TransportSettings {
            resolve: vec![
                format!("localhost=127.0.0.1:{port}")
                    .parse()
                    .expect("override"),
            ],
            ca_pem: Some(pem),
            timeout: Some(Duration::from_secs(20)),
        },
        limits: RateLimits::default(),
        read_retries: 2,
        read_retry_delay: Duration::from_millis(100),
        api_version: Some("7.4".into()),
    })
    .expect("client");
    let vault = VaultUrl::parse(&format!("https://localhost:{port}")).expect("url");

    // Ready when a read of a missing key answers NotFound (a JVM on a busy machine is slow).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        if let Ok(Some(status)) = lowkey.child.try_wait() {
            panic!("Lowkey Vault exited ({status}):\n{}", log_tail(&log));
        }
        match kv.get_key(&vault, "readiness-probe").await {
            Err(KeyVaultError::NotFound { .. }) => break,
            other if tokio::time::Instant::now() > deadline => panic!(
                "Lowkey Vault not ready after 240 s: last answer {other:?}\n{}",
                log_tail(&log)
            ),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }

    keyvault_common::missing_is_not_found(&kv, &vault).await;
    keyvault_common::create_then_get(&kv, &vault, LOWKEY).await;
    keyvault_common::update_tags_and_policy(&kv, &vault, LOWKEY).await;
    keyvault_common::create_again_makes_a_new_version(&kv, &vault, LOWKEY).await;
    keyvault_common::delete_get_deleted_recover(&kv, &vault, LOWKEY).await;
    drop(lowkey);
}
