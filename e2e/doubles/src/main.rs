//! `ckb-doubles`: runs the Key Vault, Attestation and Entra ID token endpoint doubles on loopback
//! until SIGTERM/SIGINT.
//!
//! When ready it writes the CA certificate to `--ca-out`, and prints (and writes to
//! `--ready-file`, atomically) `{"addr": "127.0.0.1:<port>", "port": <port>, "ca_file": ...}`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ckb_doubles::keyvault::throttle::ThrottleLimits;
use ckb_doubles::{Config, KeyVaultDouble, Permission};
use clap::Parser;

/// Key Vault + Attestation doubles over HTTPS, for tests and the local demo.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CKB_DOUBLES_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write the CA certificate (PEM) clients must trust.
    #[arg(long, env = "CKB_DOUBLES_CA_OUT")]
    ca_out: Option<PathBuf>,
    /// Where to write the ready JSON (address, port, CA path) once serving.
    #[arg(long, env = "CKB_DOUBLES_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// Accept only the configured tokens (otherwise any bearer token has every permission).
    #[arg(long, env = "CKB_DOUBLES_STRICT_AUTH")]
    strict_auth: bool,
    /// Extra token and its permissions, `TOKEN=get,create,...` (repeatable); the defaults
    /// `operator-token`, `release-token`, `admin-token`, `reader-token` stay.
    #[arg(long = "token", env = "CKB_DOUBLES_TOKENS", value_delimiter = ';')]
    tokens: Vec<String>,
    /// Tenant named in the 401 challenge.
    #[arg(long, env = "CKB_DOUBLES_TENANT")]
    tenant: Option<String>,
    /// Throttling window in milliseconds (Azure: 10000).
    #[arg(long, env = "CKB_DOUBLES_WINDOW_MS", default_value_t = 10_000)]
    window_ms: u64,
    /// HSM key creates per window and vault (Azure: 10).
    #[arg(long, env = "CKB_DOUBLES_HSM_CREATES", default_value_t = 10)]
    hsm_creates: u32,
    /// Other transactions per window and vault (Azure, RSA-3072 HSM keys: 500).
    #[arg(long, env = "CKB_DOUBLES_OTHER_OPS", default_value_t = 500)]
    other_ops: u32,
    /// Where release reaches attestation authorities, `SUFFIX=IP:PORT` (repeatable; default:
    /// every `*.attest.azure.net` is this process).
    #[arg(
        long = "authority-resolve",
        env = "CKB_DOUBLES_AUTHORITY_RESOLVE",
        value_delimiter = ';'
    )]
    authority_resolve: Vec<String>,
    /// Entra double: an issuer whose assertions it verifies, `ISSUER=PUBLIC_KEY_PEM_FILE`
    /// (repeatable; for Kubernetes, `--service-account-issuer` and the public key of
    /// `--service-account-signing-key-file`).
    #[arg(
        long = "entra-trust-issuer",
        env = "CKB_DOUBLES_ENTRA_TRUST_ISSUERS",
        value_delimiter = ';'
    )]
    entra_trust_issuers: Vec<String>,
    /// Entra double: a federated identity credential, `CLIENT_ID|ISSUER|SUBJECT` (audience
    /// `api://AzureADTokenExchange`; repeatable).
    #[arg(
        long = "entra-federated-credential",
        env = "CKB_DOUBLES_ENTRA_CREDENTIALS",
        value_delimiter = ';'
    )]
    entra_credentials: Vec<String>,
    /// Entra double: lifetime of the access tokens it issues, in seconds (Entra: about an hour).
    #[arg(long, env = "CKB_DOUBLES_ENTRA_TOKEN_LIFETIME", default_value_t = 3600)]
    entra_token_lifetime: u64,
}

fn parse_token(spec: &str) -> anyhow::Result<(String, BTreeSet<Permission>)> {
    let (token, perms) = spec
        .split_once('=')
        .with_context(|| format!("--token {spec}: expected TOKEN=perm,perm"))?;
    let perms = perms
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            serde_json::from_value::<Permission>(serde_json::Value::from(p.trim()))
                .with_context(|| format!("unknown permission {p:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((token.to_owned(), perms))
}

fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = config(&args)?;
    let double = KeyVaultDouble::start(config).await?;
    announce_ready(&double, &args)?;
    wait_for_signal().await?;
    double.shutdown().await;
    Ok(())
}

/// The doubles' configuration from the command line.
fn config(args: &Args) -> anyhow::Result<Config> {
    let mut config = Config {
        listen: args.listen,
        strict_auth: args.strict_auth,
        throttle: ThrottleLimits {
            window_ms: args.window_ms,
            hsm_creates: args.hsm_creates,
            other: args.other_ops,
            ..ThrottleLimits::default()
        },
        ..Config::default()
    };
    if let Some(t) = &args.tenant {
        config.tenant = t.clone();
    }
    config.entra.tenant = config.tenant.clone();
    config.entra.token_lifetime = std::time::Duration::from_secs(args.entra_token_lifetime);
    for spec in &args.entra_trust_issuers {
        config.entra.issuers.push(parse_trusted_issuer(spec)?);
    }
    for spec in &args.entra_credentials {
        config.entra.credentials.push(parse_credential(spec)?);
    }
    for spec in &args.tokens {
        let (token, perms) = parse_token(spec)?;
        config.tokens.insert(token, perms);
    }
    for spec in &args.authority_resolve {
        config.authority_resolve.push(parse_authority(spec)?);
    }
    Ok(config)
}

/// `ISSUER=PUBLIC_KEY_PEM_FILE`, the key read from the file.
fn parse_trusted_issuer(spec: &str) -> anyhow::Result<ckb_doubles::TrustedIssuer> {
    let Some((issuer, pem_file)) = spec.rsplit_once('=') else {
        bail!("--entra-trust-issuer {spec}: expected ISSUER=PUBLIC_KEY_PEM_FILE");
    };
    let public_key_pem = std::fs::read_to_string(pem_file)
        .with_context(|| format!("reading the public key of {issuer} from {pem_file}"))?;
    Ok(ckb_doubles::TrustedIssuer {
        issuer: issuer.to_owned(),
        public_key_pem,
    })
}

/// `CLIENT_ID|ISSUER|SUBJECT`, for the token exchange audience.
fn parse_credential(spec: &str) -> anyhow::Result<ckb_doubles::FederatedCredential> {
    let parts: Vec<&str> = spec.split('|').collect();
    let [client_id, issuer, subject] = parts[..] else {
        bail!("--entra-federated-credential {spec}: expected CLIENT_ID|ISSUER|SUBJECT");
    };
    Ok(ckb_doubles::FederatedCredential {
        client_id: client_id.to_owned(),
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        audience: ckb_doubles::entra::TOKEN_EXCHANGE_AUDIENCE.to_owned(),
    })
}

/// `SUFFIX=IP:PORT`.
fn parse_authority(spec: &str) -> anyhow::Result<(String, SocketAddr)> {
    let Some((suffix, addr)) = spec.split_once('=') else {
        bail!("--authority-resolve {spec}: expected SUFFIX=IP:PORT");
    };
    Ok((
        suffix.to_owned(),
        addr.parse().context("authority address")?,
    ))
}

/// Writes the CA file, then prints the ready JSON and writes it to the ready file: a reader that
/// sees the ready file finds the CA already there.
fn announce_ready(double: &KeyVaultDouble, args: &Args) -> anyhow::Result<()> {
    if let Some(path) = &args.ca_out {
        write_atomically(path, double.ca_pem().as_bytes())?;
    }
    let ready = serde_json::json!({
        "addr": double.addr().to_string(),
        "port": double.addr().port(),
        "ca_file": args.ca_out.as_ref().map(|p| p.display().to_string()),
        "pid": std::process::id(),
    });
    println!("{ready}");
    if let Some(path) = &args.ready_file {
        write_atomically(path, ready.to_string().as_bytes())?;
    }
    Ok(())
}

/// Returns on SIGINT or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
