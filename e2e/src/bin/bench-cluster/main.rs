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

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ckb_crds::{ConfidentialKeyBinding, labels};
use ckb_e2e::suite_env::{DEMO_AUTHORITY, DEMO_VAULT, EnvOptions, Environment};
use ckb_operator::caches::{PolicySummary, policy_label_selector};
use ckb_operator::controller::index::{INJECTED_LABEL, slim_pod};
use ckb_operator::webhook::sources::PREPARED_POLICY_BYTES;
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

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

fn row(
    rows: &PathBuf,
    section: &str,
    figure: &str,
    value: &str,
    base: &str,
    ratio: &str,
) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(rows)?;
    writeln!(f, "{section}\t{figure}\t{value}\t{base}\t{ratio}")?;
    eprintln!("  {figure}: {value} (baseline {base}, ratio {ratio})");
    Ok(())
}

fn policy(kib: usize, seed: usize) -> String {
    let mut s = format!("package agent_policy\n\n# {seed}\n");
    let mut i = 0;
    while s.len() < kib * 1024 {
        s.push_str(&format!(
            "    {{\"name\": \"rule_{i}\", \"allowed\": [\"/bin/sh\", \"-c\"], \"layer\": \"{i:064x}\"}},\n"
        ));
        i += 1;
    }
    s
}

fn config_map(ns: &str, name: &str, rego: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {labels::POLICY: "true"}},
        "data": {"policy.rego": rego}
    }))?)
}

/// A binding that pins the hash of `rego`, its ConfigMap's policy (bindings pin by default).
fn binding(ns: &str, name: &str, vault: &str, rego: &str) -> Result<ConfidentialKeyBinding> {
    let sha256 = ckb_operator::policy::hash::hash_rego(rego.as_bytes()).to_string();
    Ok(serde_json::from_value(json!({
        "apiVersion": "ckb.dev/v1alpha1",
        "kind": "ConfidentialKeyBinding",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": name}},
            "key": {"vault": vault, "name": name, "type": "EC-HSM", "curve": "P-256"},
            "attestation": {"authority": DEMO_AUTHORITY},
            "policy": {"configMapRef": {"name": format!("{name}-policy"), "key": "policy.rego"},
                       "sha256": [sha256]}
        }
    }))?)
}

/// A pod of two app containers (what `operator/tests/data/admission` captures), confidential when
/// `runtime_class` is given.
fn pod(ns: &str, name: &str, app: &str, runtime_class: Option<&str>) -> Result<Pod> {
    let mut spec = json!({
        "containers": [
            {"name": "app", "image": "registry.example/orders:1.4.2",
             "ports": [{"containerPort": 8443}],
             "env": [{"name": "LOG_LEVEL", "value": "info"}],
             "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
            {"name": "metrics", "image": "registry.example/exporter:0.9",
             "ports": [{"containerPort": 9100}]}
        ]
    });
    if let Some(rc) = runtime_class {
        spec["runtimeClassName"] = rc.into();
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app": app, "azure.workload.identity/use": "true"}},
        "spec": spec
    }))?)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1]
}

fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Waits until the operator's RSS has not moved by more than 1 MiB for 5 s (its caches caught up),
/// at most `max`; returns the RSS in KiB.
async fn settled_rss(pid: u32, max: Duration) -> Result<u64> {
    let deadline = Instant::now() + max;
    let mut last = rss_kib(pid)?.0;
    let mut stable_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid)?.0;
        if now.abs_diff(last) > 1024 {
            stable_since = Instant::now();
            last = now;
        }
        if stable_since.elapsed() >= Duration::from_secs(5) || Instant::now() >= deadline {
            return Ok(now);
        }
    }
}

async fn create_all<K>(api_for: impl Fn(&K) -> Api<K>, objects: Vec<K>) -> Result<Duration>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let started = Instant::now();
    futures::stream::iter(objects)
        .map(|o| {
            let api = api_for(&o);
            async move { api.create(&PostParams::default(), &o).await.map(|_| ()) }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed())
}

async fn latency(env: &Environment, args: &Args) -> Result<()> {
    let client = env.cp.client();
    env.create_namespace("bench-on", true)?;
    env.create_namespace("bench-off", false)?;
    let rego = policy(args.policy_kib, 0);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench-on");
    cms.create(
        &PostParams::default(),
        &config_map("bench-on", "orders-policy", &rego)?,
    )
    .await?;
    let bindings: Api<ConfidentialKeyBinding> = Api::namespaced(client.clone(), "bench-on");
    bindings
        .create(
            &PostParams::default(),
            &binding("bench-on", "orders", DEMO_VAULT, &rego)?,
        )
        .await?;
    env.wait_binding_ready("bench-on", "orders").await?;
    let on: Api<Pod> = Api::namespaced(client.clone(), "bench-on");
    let off: Api<Pod> = Api::namespaced(client.clone(), "bench-off");
    let (mut with, mut without, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
    let pp = PostParams::default();
    // Warm-up: connections, the webhook's TLS session, the API server's caches.
    for i in 0..10 {
        on.create(
            &pp,
            &pod(
                "bench-on",
                &format!("warm-{i}"),
                "orders",
                Some("kata-cc-isolation"),
            )?,
        )
        .await?;
        off.create(
            &pp,
            &pod(
                "bench-off",
                &format!("warm-{i}"),
                "orders",
                Some("kata-cc-isolation"),
            )?,
        )
        .await?;
    }
    for i in 0..args.creates {
        let p = pod(
            "bench-on",
            &format!("p-{i}"),
            "orders",
            Some("kata-cc-isolation"),
        )?;
        let t = Instant::now();
        let created = on.create(&pp, &p).await?;
        with.push(t.elapsed().as_secs_f64() * 1000.0);
        let injected = created
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.get(INJECTED_LABEL).is_some_and(|v| v == "true"));
        if !injected {
            bail!("pod bench-on/p-{i} was not injected");
        }
        let p = pod(
            "bench-off",
            &format!("p-{i}"),
            "orders",
            Some("kata-cc-isolation"),
        )?;
        let t = Instant::now();
        off.create(&pp, &p).await?;
        without.push(t.elapsed().as_secs_f64() * 1000.0);
        let p = pod("bench-on", &format!("plain-{i}"), "web", None)?;
        let t = Instant::now();
        on.create(&pp, &p).await?;
        unchanged.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    for v in [&mut with, &mut without, &mut unchanged] {
        v.sort_by(f64::total_cmp);
    }
    let n = args.creates;
    for (p, name) in [(50.0, "p50"), (99.0, "p99")] {
        let (w, o, u) = (pct(&with, p), pct(&without, p), pct(&unchanged, p));
        row(
            &args.rows,
            "api-server",
            &format!(
                "pod create with the webhook (120 KiB policy patch), {n} creates: {name} ms (vs no webhook)"
            ),
            &format!("{w:.1}"),
            &format!("{o:.1}"),
            &format!("{:.2}", w / o),
        )?;
        row(
            &args.rows,
            "api-server",
            &format!("pod create with the webhook, pod needs no change: {name} ms (vs no webhook)"),
            &format!("{u:.1}"),
            &format!("{o:.1}"),
            &format!("{:.2}", u / o),
        )?;
        row(
            &args.rows,
            "api-server",
            &format!("added latency of the webhook (patch), {name} ms"),
            &format!("{:.1}", w - o),
            "",
            "",
        )?;
    }
    Ok(())
}

/// Pods admitted through the webhook with distinct 120 KiB policies in the memory figure: more
/// than its prepared-policy cache keeps (about 43 of them), so that the cache ends full.
const ADMITTED_POLICIES: usize = 60;

fn json_bytes<T: serde::Serialize>(items: &[T]) -> usize {
    items
        .iter()
        .map(|o| serde_json::to_vec(o).map_or(0, |v| v.len()))
        .sum()
}

async fn memory(env: &Environment, args: &Args) -> Result<()> {
    let client = env.cp.client();
    let pid = env.operator_pid().context("the operator is not running")?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let r0 = settled_rss(pid, Duration::from_secs(60)).await?;
    let namespaces = 10usize;
    for n in 0..namespaces {
        // Not opted in to injection: the pods below are created as the webhook leaves them,
        // without the API server calling it for each.
        env.create_namespace(&format!("scale-{n}"), false)?;
    }
    let ns_of = |i: usize| format!("scale-{}", i % namespaces);
    // Policy ConfigMaps, each with its own policy text of `policy_kib`.
    let base = policy(args.policy_kib, 0);
    let cms: Vec<ConfigMap> = (0..args.bindings)
        .map(|i| {
            config_map(
                &ns_of(i),
                &format!("b{i}-policy"),
                &format!("# {i}\n{base}"),
            )
        })
        .collect::<Result<_>>()?;
    let took = create_all(
        |c: &ConfigMap| {
            Api::namespaced(
                client.clone(),
                c.metadata.namespace.as_deref().unwrap_or_default(),
            )
        },
        cms,
    )
    .await?;
    eprintln!("  {} ConfigMaps created in {took:?}", args.bindings);
    let r1 = settled_rss(pid, Duration::from_secs(120)).await?;
    // Bindings on a vault outside the allow-list: the controller reconciles each (one status
    // write, VaultNotAllowed) and calls no Key Vault, so 1,000 keys are not created at the
    // service's 1 create/s; the caches hold the same objects either way.
    let bs: Vec<ConfidentialKeyBinding> = (0..args.bindings)
        .map(|i| {
            binding(
                &ns_of(i),
                &format!("b{i}"),
                "https://bench-scale.vault.azure.net",
                &format!("# {i}\n{base}"),
            )
        })
        .collect::<Result<_>>()?;
    let took = create_all(
        |b: &ConfidentialKeyBinding| {
            Api::namespaced(
                client.clone(),
                b.metadata.namespace.as_deref().unwrap_or_default(),
            )
        },
        bs,
    )
    .await?;
    eprintln!("  {} bindings created in {took:?}", args.bindings);
    let r2 = settled_rss(pid, Duration::from_secs(180)).await?;
    // Injected pods, as the webhook leaves them (its label and annotations, naming a binding of
    // their namespace; the policy annotation is left out to keep etcd small, the operator drops
    // it when caching anyway).
    let hash = ckb_operator::policy::hash::hash_rego(base.as_bytes());
    let pods: Vec<Pod> = (0..args.pods)
        .map(|i| {
            let b = i % args.bindings;
            let name = format!("b{b}");
            let mut p = pod(
                &ns_of(b),
                &format!("p{i}"),
                &name,
                Some("kata-cc-isolation"),
            )?;
            p.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(INJECTED_LABEL.into(), "true".into());
            p.metadata.annotations = Some(BTreeMap::from([
                (labels::BINDINGS.to_string(), name),
                (labels::POLICY_SHA256.to_string(), hash.to_string()),
            ]));
            Ok(p)
        })
        .collect::<Result<_>>()?;
    let took = create_all(
        |p: &Pod| {
            Api::namespaced(
                client.clone(),
                p.metadata.namespace.as_deref().unwrap_or_default(),
            )
        },
        pods,
    )
    .await?;
    eprintln!("  {} pods created in {took:?}", args.pods);
    let r3 = settled_rss(pid, Duration::from_secs(180)).await?;
    // Pods admitted through the webhook, each with a policy of its own, more of them than the
    // webhook keeps prepared: its cache of prepared policies ends full (at its byte bound).
    let hook_ns = "scale-hook";
    env.create_namespace(hook_ns, true)?;
    let admitted = ADMITTED_POLICIES;
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), hook_ns);
    let b_api: Api<ConfidentialKeyBinding> = Api::namespaced(client.clone(), hook_ns);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), hook_ns);
    let pp = PostParams::default();
    for i in 0..admitted {
        let name = format!("h{i}");
        let rego = format!("# hook {i}\n{base}");
        cm_api
            .create(&pp, &config_map(hook_ns, &format!("{name}-policy"), &rego)?)
            .await?;
        b_api
            .create(
                &pp,
                &binding(hook_ns, &name, "https://bench-scale.vault.azure.net", &rego)?,
            )
            .await?;
    }
    // The policy cache fetches the new ConfigMaps; the webhook needs their summaries.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started = Instant::now();
    for i in 0..admitted {
        let name = format!("h{i}");
        let p = pod(
            hook_ns,
            &format!("{name}-0"),
            &name,
            Some("kata-cc-isolation"),
        )?;
        let created = pod_api.create(&pp, &p).await?;
        let injected = created
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(labels::AGENT_POLICY));
        if !injected {
            bail!("pod {hook_ns}/{name}-0 was not injected");
        }
    }
    eprintln!(
        "  {admitted} pods admitted with distinct policies in {:?}",
        started.elapsed()
    );
    let r4 = settled_rss(pid, Duration::from_secs(120)).await?;
    let (_, peak) = rss_kib(pid)?;

    // What the caches hold, measured from the API server's listing.
    let all_b: Vec<ConfidentialKeyBinding> = Api::<ConfidentialKeyBinding>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let all_cm: Vec<ConfigMap> = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().labels(&policy_label_selector()))
        .await?
        .items;
    // What the policy cache holds of each: its summary for the referenced key.
    let key = "policy.rego".to_string();
    let summaries: Vec<PolicySummary> = all_cm
        .iter()
        .map(|c| PolicySummary::of(c, [&key]))
        .collect();
    let mut all_pods: Vec<Pod> = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{INJECTED_LABEL}=true")))
        .await?
        .items;
    for p in &mut all_pods {
        slim_pod(p);
    }
    let goal_mib = 128.0;
    let rows = &args.rows;
    row(
        rows,
        "memory",
        "operator RSS at rest: MiB",
        &format!("{:.1}", mib(r0)),
        "",
        "",
    )?;
    row(
        rows,
        "memory",
        &format!(
            "RSS with {} policy ConfigMaps ({} KiB each): MiB",
            args.bindings, args.policy_kib
        ),
        &format!("{:.1}", mib(r1)),
        "",
        "",
    )?;
    row(
        rows,
        "memory",
        &format!("RSS with + {} bindings: MiB", args.bindings),
        &format!("{:.1}", mib(r2)),
        "",
        "",
    )?;
    row(
        rows,
        "memory",
        &format!(
            "RSS with + {} injected pods: MiB (vs the 128 MiB goal)",
            args.pods
        ),
        &format!("{:.1}", mib(r3)),
        &format!("{goal_mib:.0}"),
        &format!("{:.2}", mib(r3) / goal_mib),
    )?;
    row(
        rows,
        "memory",
        &format!(
            "RSS with + {admitted} pods admitted by the webhook, each with its own policy (its prepared-policy cache full, bound {} MiB): MiB (vs the 128 MiB goal)",
            PREPARED_POLICY_BYTES / 1048576
        ),
        &format!("{:.1}", mib(r4)),
        &format!("{goal_mib:.0}"),
        &format!("{:.2}", mib(r4) / goal_mib),
    )?;
    row(
        rows,
        "memory",
        "peak RSS (VmHWM): MiB (vs the 128 MiB goal)",
        &format!("{:.1}", mib(peak)),
        &format!("{goal_mib:.0}"),
        &format!("{:.2}", mib(peak) / goal_mib),
    )?;
    let per = |d: u64, n: usize| format!("{:.1}", d as f64 / n.max(1) as f64);
    row(
        rows,
        "memory",
        "growth per policy ConfigMap no binding references yet (watched by metadata only): KiB (vs its JSON size)",
        &per(r1.saturating_sub(r0), args.bindings),
        &format!(
            "{:.1}",
            json_bytes(&all_cm) as f64 / 1024.0 / all_cm.len().max(1) as f64
        ),
        "",
    )?;
    row(
        rows,
        "memory",
        "growth per binding, its policy ConfigMap now fetched and summarized: KiB (vs the JSON size of the binding and the summary)",
        &per(r2.saturating_sub(r1), args.bindings),
        &format!(
            "{:.1}",
            (json_bytes(&all_b) + json_bytes(&summaries)) as f64
                / 1024.0
                / all_b.len().max(1) as f64
        ),
        "",
    )?;
    row(
        rows,
        "memory",
        "growth per pod: KiB (vs its slimmed JSON size)",
        &per(r3.saturating_sub(r2), args.pods),
        &format!(
            "{:.2}",
            json_bytes(&all_pods) as f64 / 1024.0 / all_pods.len().max(1) as f64
        ),
        "",
    )?;
    row(
        rows,
        "memory",
        "cache payload (JSON) bindings / policy summaries (of ConfigMaps holding) / slimmed pods: MiB",
        &format!(
            "{:.1} / {:.2} (of {:.1}) / {:.1}",
            json_bytes(&all_b) as f64 / 1048576.0,
            json_bytes(&summaries) as f64 / 1048576.0,
            json_bytes(&all_cm) as f64 / 1048576.0,
            json_bytes(&all_pods) as f64 / 1048576.0
        ),
        "",
        "",
    )?;
    Ok(())
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
    let result: Result<()> = async {
        eprintln!(
            "through the API server: {} creates per series",
            args.creates
        );
        latency(&env, &args).await?;
        eprintln!("memory at scale");
        memory(&env, &args).await
    }
    .await;
    if result.is_err() {
        env.print_logs(40);
    }
    result
}
