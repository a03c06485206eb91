//! The mounted-directory watch: reloads, and ends when told to.

use super::*;

fn write_pair(dir: &Path) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.join(KEY_TLS_CRT), cert.cert.pem()).unwrap();
    std::fs::write(dir.join(KEY_TLS_KEY), cert.signing_key.serialize_pem()).unwrap();
}

#[tokio::test]
async fn the_watch_ends_when_cancelled() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path());
    let (crt, key) = read_cert_dir(dir.path()).unwrap();
    let tls = RustlsConfig::from_pem(crt, key).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(watch_cert_dir(
        dir.path().to_path_buf(),
        tls,
        Duration::from_secs(3600),
        shutdown.clone(),
    ));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the watch did not end after cancellation")
        .unwrap();
}
