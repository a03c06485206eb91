//! The `ckb-doubles` binary as the demo and e2e scripts use it: ready file, CA file, serving,
//! clean exit on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[tokio::test]
async fn binary_announces_readiness_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let ready = dir.path().join("ready.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ckb-doubles"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--strict-auth",
            "--token",
            "t=get,create",
        ])
        .arg("--ca-out")
        .arg(&ca)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "no ready file");
        assert!(child.try_wait().unwrap().is_none(), "exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info: Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let addr: std::net::SocketAddr = info["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(info["port"], addr.port());
    assert_eq!(info["ca_file"], ca.display().to_string());

    let pem = std::fs::read(&ca).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .resolve("demo.vault.azure.net", addr)
        .build()
        .unwrap();
    let url = format!("https://demo.vault.azure.net:{}", addr.port());
    let r = client
        .post(format!("{url}/keys/k/create?api-version=7.4"))
        .bearer_auth("t")
        .json(&json!({"kty": "EC-HSM"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{url}/keys/k?api-version=7.4"))
        .bearer_auth("unknown")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "--strict-auth refuses unknown tokens");
    let r = client
        .delete(format!("{url}/keys/k?api-version=7.4"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "--token gave only get and create");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
}
