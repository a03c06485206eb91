//! Section 2: the operator's memory at scale. Its resident set size at rest, then after each load
//! step (policy ConfigMaps, bindings, injected pods, pods the webhook admitted with more distinct
//! policies than it keeps prepared), beside the JSON size of what its caches hold.

mod load;
mod report;

use std::time::Duration;

use anyhow::{Context as _, Result};
use ckb_e2e::suite_env::Environment;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Args;
use crate::measure::{rss_kib, settled_rss};
use crate::objects::{create_all, policy};

/// The operator's settled RSS after each step, and its peak, KiB.
struct Readings {
    /// Before anything is created.
    rest: u64,
    /// With the policy ConfigMaps.
    config_maps: u64,
    /// With as many bindings.
    bindings: u64,
    /// With the injected pods.
    pods: u64,
    /// After the webhook admitted pods with distinct policies.
    admitted: u64,
    /// VmHWM at the end.
    peak: u64,
}

/// Loads the cluster step by step, reading the operator's RSS after each, and appends the rows.
pub async fn run(env: &Environment, args: &Args) -> Result<()> {
    let client = env.cp.client();
    let pid = env.operator_pid().context("the operator is not running")?;
    let rest = settled_rss(pid, Duration::from_secs(60)).await?;
    load::create_scale_namespaces(env)?;
    let base = policy(args.policy_kib, 0);
    let objects = load::policy_config_maps(args.bindings, &base)?;
    let config_maps = create_and_settle(&client, pid, "ConfigMaps", objects, 120).await?;
    let objects = load::bindings(args.bindings, &base)?;
    let bindings = create_and_settle(&client, pid, "bindings", objects, 180).await?;
    let objects = load::injected_pods(args.pods, args.bindings, &base)?;
    let pods = create_and_settle(&client, pid, "pods", objects, 180).await?;
    load::admit_distinct_policies(env, &base).await?;
    let admitted = settled_rss(pid, Duration::from_secs(120)).await?;
    let (_, peak) = rss_kib(pid)?;
    let readings = Readings {
        rest,
        config_maps,
        bindings,
        pods,
        admitted,
        peak,
    };
    let payload = report::Payload::list(&client).await?;
    report::rows(args, &readings, &payload)
}

/// Creates `objects` (`what` names them in the progress line), then waits at most `settle_secs`
/// for the operator's caches to catch up; returns its RSS then, KiB.
async fn create_and_settle<K>(
    client: &Client,
    pid: u32,
    what: &str,
    objects: Vec<K>,
    settle_secs: u64,
) -> Result<u64>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let n = objects.len();
    let took = create_all(client, objects).await?;
    eprintln!("  {n} {what} created in {took:?}");
    settled_rss(pid, Duration::from_secs(settle_secs)).await
}
