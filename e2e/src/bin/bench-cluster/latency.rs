//! Section 1: pod creates through the real API server with the webhook (a confidential pod in an
//! opted-in namespace, patched with its policy), without it (the same pod in a namespace that is
//! not opted in), and with the webhook for a pod that needs no change; p50/p99 of each series.

use std::time::Instant;

use anyhow::{Result, bail};
use ckb_crds::ConfidentialKeyBinding;
use ckb_e2e::suite_env::{DEMO_VAULT, Environment};
use ckb_operator::controller::index::INJECTED_LABEL;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::PostParams;

use crate::Args;
use crate::measure::pct;
use crate::objects::{CONFIDENTIAL_CLASS, binding, config_map, pod, policy};
use crate::table::Section;

/// The namespace opted in to injection.
const ON: &str = "bench-on";
/// The namespace that is not.
const OFF: &str = "bench-off";

/// Create latencies in ms, one series each.
#[derive(Default)]
struct Series {
    /// Confidential pods the webhook patched.
    with: Vec<f64>,
    /// The same pods where the API server does not call the webhook.
    without: Vec<f64>,
    /// Pods the webhook is called for but leaves as they are.
    unchanged: Vec<f64>,
}

/// Measures the three series and appends their rows.
pub async fn run(env: &Environment, args: &Args) -> Result<()> {
    bind_orders(env, args.policy_kib).await?;
    let client = env.cp.client();
    let on: Api<Pod> = Api::namespaced(client.clone(), ON);
    let off: Api<Pod> = Api::namespaced(client, OFF);
    warm_up(&on, &off).await?;
    let mut series = measure(&on, &off, args.creates).await?;
    for v in [&mut series.with, &mut series.without, &mut series.unchanged] {
        v.sort_by(f64::total_cmp);
    }
    report(
        &Section::new(&args.rows, "api-server"),
        &series,
        args.creates,
    )
}

/// Creates both namespaces and, in the opted-in one, the `orders` binding and its policy
/// ConfigMap; returns once the binding is ready.
async fn bind_orders(env: &Environment, policy_kib: usize) -> Result<()> {
    let client = env.cp.client();
    env.create_namespace(ON, true)?;
    env.create_namespace(OFF, false)?;
    let rego = policy(policy_kib, 0);
    let pp = PostParams::default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ON);
    cms.create(&pp, &config_map(ON, "orders-policy", &rego)?)
        .await?;
    let bindings: Api<ConfidentialKeyBinding> = Api::namespaced(client, ON);
    bindings
        .create(&pp, &binding(ON, "orders", DEMO_VAULT, &rego)?)
        .await?;
    env.wait_binding_ready(ON, "orders").await?;
    Ok(())
}

/// Unmeasured creates in both namespaces: connections, the webhook's TLS session, the API
/// server's caches.
async fn warm_up(on: &Api<Pod>, off: &Api<Pod>) -> Result<()> {
    for i in 0..10 {
        for (api, ns) in [(on, ON), (off, OFF)] {
            let p = pod(ns, &format!("warm-{i}"), "orders", Some(CONFIDENTIAL_CLASS))?;
            timed_create(api, &p).await?;
        }
    }
    Ok(())
}

/// `creates` rounds, interleaved so that the series see the same conditions: a confidential pod
/// with the webhook (which must inject it), the same without, a pod that needs no change.
async fn measure(on: &Api<Pod>, off: &Api<Pod>, creates: usize) -> Result<Series> {
    let mut series = Series::default();
    for i in 0..creates {
        let p = pod(ON, &format!("p-{i}"), "orders", Some(CONFIDENTIAL_CLASS))?;
        let (created, ms) = timed_create(on, &p).await?;
        series.with.push(ms);
        if !has_injected_label(&created) {
            bail!("pod {ON}/p-{i} was not injected");
        }
        let p = pod(OFF, &format!("p-{i}"), "orders", Some(CONFIDENTIAL_CLASS))?;
        series.without.push(timed_create(off, &p).await?.1);
        let p = pod(ON, &format!("plain-{i}"), "web", None)?;
        series.unchanged.push(timed_create(on, &p).await?.1);
    }
    Ok(series)
}

/// Creates `pod`; returns the stored pod and how long the create took, ms.
async fn timed_create(api: &Api<Pod>, pod: &Pod) -> Result<(Pod, f64)> {
    let t = Instant::now();
    let created = api.create(&PostParams::default(), pod).await?;
    Ok((created, t.elapsed().as_secs_f64() * 1000.0))
}

/// Whether the webhook marked `pod` as injected.
fn has_injected_label(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(INJECTED_LABEL).is_some_and(|v| v == "true"))
}

/// p50 and p99 of each series against the series without the webhook, and the difference.
fn report(section: &Section<'_>, series: &Series, n: usize) -> Result<()> {
    for (p, name) in [(50.0, "p50"), (99.0, "p99")] {
        let w = pct(&series.with, p);
        let o = pct(&series.without, p);
        let u = pct(&series.unchanged, p);
        section.row(
            &format!(
                "pod create with the webhook (120 KiB policy patch), {n} creates: {name} ms (vs no webhook)"
            ),
            &format!("{w:.1}"),
            &format!("{o:.1}"),
            &format!("{:.2}", w / o),
        )?;
        section.row(
            &format!("pod create with the webhook, pod needs no change: {name} ms (vs no webhook)"),
            &format!("{u:.1}"),
            &format!("{o:.1}"),
            &format!("{:.2}", u / o),
        )?;
        section.row(
            &format!("added latency of the webhook (patch), {name} ms"),
            &format!("{:.1}", w - o),
            "",
            "",
        )?;
    }
    Ok(())
}
