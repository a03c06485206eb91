//! `bench-cluster`: the figures `scripts/bench.sh` takes on the local control plane, with the real
//! operator binary (`$CKB_OPERATOR_BIN`, a release build) running as in the e2e suite.
//!
//! 1. Pod creation through the real API server with vs without the webhook: the same confidential
//!    pod created in a namespace opted in to injection (the API server calls the webhook, which
//!    patches it with a 120 KiB policy) and in one that is not (no call), interleaved one by one,
//!    and a pod that needs no change in the opted-in namespace; p50/p99 of each create.
//! 2. The operator's memory at scale: resident set size (VmRSS from /proc) at rest, then with
//!    `--bindings` policy ConfigMaps, then as many bindings, then `--pods` injected pods, then
//!    after the webhook admitted pods with more distinct policies than it keeps prepared (its
//!    prepared-policy cache full); the growth per object; beside it the JSON size of what the
//!    caches hold (bindings, the policy ConfigMaps' summaries, and the pods slimmed as the
//!    operator slims them), as an estimate of the caches' payload.
//!
//! Each figure is appended to `--rows` as a tab-separated line: section, figure, value, baseline,
//! ratio.

mod latency;
mod measure;
mod memory;
mod objects;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use ckb_e2e::suite_env::{EnvOptions, Environment};
use clap::Parser;

/// Figures on the local control plane for `scripts/bench.sh`.
#[derive(Parser, Debug)]
struct Args {
    /// File the table rows are appended to.
    #[arg(long)]
    rows: PathBuf,
    /// Pod creates per series (with the webhook, without, no change).
    #[arg(long, default_value_t = 200)]
    creates: usize,
    /// Bindings (and policy ConfigMaps) for the memory figure.
    #[arg(long, default_value_t = 1000)]
    bindings: usize,
    /// Injected pods for the memory figure.
    #[arg(long, default_value_t = 10000)]
    pods: usize,
    /// Size of every agent policy, KiB.
    #[arg(long, default_value_t = 120)]
    policy_kib: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if std::env::var_os("CKB_OPERATOR_BIN").is_none() {
        bail!("set CKB_OPERATOR_BIN to a release build of ckb-operator");
    }
    let env = Environment::start(EnvOptions {
        resync_period: Duration::from_secs(600),
        ..EnvOptions::default()
    })
    .await?;
    let result = sections(&env, &args).await;
    if result.is_err() {
        env.print_logs(40);
    }
    result
}

/// The two sections, in the order of the table.
async fn sections(env: &Environment, args: &Args) -> Result<()> {
    eprintln!(
        "through the API server: {} creates per series",
        args.creates
    );
    latency::run(env, args).await?;
    eprintln!("memory at scale");
    memory::run(env, args).await
}
