//! Steady state and throttling end to end: the real operator binary with the chart's RBAC on a
//! real control plane, against the Key Vault double, whose request log (with arrival times) is
//! the evidence of what the operator sent.
//!
//! - A Ready binding watched over several short resync periods costs reads only: not one write
//!   in the double's log, no change of the binding (resourceVersion, status), no new Event.
//! - A 429 storm on the key's create (the double's fault injection, with a `Retry-After` that is
//!   neither the double's default nor the client's fallback) shows on the binding, then clears:
//!   each retry waits at least `Retry-After`, and the key has exactly one version.
//!
//! Run one test at a time (`cargo test -p ckb-e2e --test steady_state_e2e -- --test-threads=1`):
//! each starts a control plane. Needs the local control plane; fails, never skips, without it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use ckb_crds::ConfidentialKeyBinding;
use ckb_crds::conditions::{reasons, types};
use ckb_doubles::{Fault, LogEntry};
use ckb_e2e::suite_env::{
    BindingManifest, EnvOptions, Environment, policy_config_map_yaml, wait_for,
};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;

const VAULT_HOST: &str = "demo.vault.azure.net";

/// The policy of both scenarios.
const REGO: &str = "package agent_policy\ndefault CreateContainerRequest := true\n";

/// The Events about binding `name`: (event name → (resourceVersion, reason, occurrences)).
async fn events_of(
    env: &Environment,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, (String, String, i32)>> {
    let api: Api<Event> = Api::namespaced(env.cp.client(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name))
        })
        .map(|e| {
            let occurrences = e.series.as_ref().map_or(1, |s| s.count);
            (
                e.metadata.name.clone().unwrap_or_default(),
                (
                    e.metadata.resource_version.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    occurrences,
                ),
            )
        })
        .collect())
}

fn key_reads(log: &[LogEntry], key: &str) -> usize {
    log.iter()
        .filter(|e| {
            e.authenticated && e.method == "GET" && e.path.starts_with(&format!("/keys/{key}"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_binding_makes_no_write_and_no_change_over_several_resyncs() -> Result<()> {
    const RESYNC: Duration = Duration::from_secs(3);
    const PERIODS: usize = 5;
    let t0 = Instant::now();
    let env = Environment::start(EnvOptions {
        resync_period: RESYNC,
        ..EnvOptions::default()
    })
    .await?;
    let ns = "e2e-steady";
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(ns, "steady-policy", REGO))?;
    env.apply_yaml(
        &BindingManifest::new(ns, "steady", "steady-key")
            .ec_p256()
            .deletion("Delete")
            .yaml(),
    )?;
    let ready = env.wait_binding_ready(ns, "steady").await?;
    // From Ready on, nothing may change.
    let start = env.double.log().len();
    let events_before = events_of(&env, ns, "steady").await?;
    ensure!(
        !events_before.is_empty(),
        "the creation was reported by an Event (KeyCreated)"
    );
    let api: Api<ConfidentialKeyBinding> = Api::namespaced(env.cp.client(), ns);

    // Watch until the operator has looked at the key PERIODS more times (one read per resync),
    // failing at the first write.
    let watched = Instant::now();
    wait_for(
        RESYNC * (PERIODS as u32 + 3),
        &format!("{PERIODS} resyncs of the key"),
        || async {
            let log = env.double.log();
            let since = &log[start.min(log.len())..];
            let writes: Vec<&LogEntry> = since.iter().filter(|e| e.write).collect();
            ensure!(writes.is_empty(), "writes in steady state: {writes:?}");
            Ok((key_reads(since, "steady-key") >= PERIODS).then_some(()))
        },
    )
    .await?;
    let elapsed = watched.elapsed();

    let log = env.double.log();
    let since = &log[start..];
    let writes: Vec<&LogEntry> = since.iter().filter(|e| e.write).collect();
    assert!(writes.is_empty(), "writes in steady state: {writes:?}");
    // Reads only, and not more than about one per resync (plus the challenge probe the SDK
    // may make on a new connection).
    let reads = key_reads(since, "steady-key");
    let periods = elapsed.as_secs_f64() / RESYNC.as_secs_f64();
    assert!(
        (reads as f64) <= periods * 1.5 + 2.0,
        "{reads} reads in {periods:.1} resync periods: {since:?}"
    );
    let now = api.get("steady").await?;
    assert_eq!(
        now.metadata.resource_version, ready.metadata.resource_version,
        "the binding was written in steady state"
    );
    assert_eq!(
        serde_json::to_value(&now.status)?,
        serde_json::to_value(&ready.status)?,
        "the status changed in steady state"
    );
    let events_after = events_of(&env, ns, "steady").await?;
    assert_eq!(events_after, events_before, "Events in steady state");
    eprintln!(
        "steady state: {reads} reads, 0 writes over {elapsed:?} ({periods:.1} resyncs); test done in {:?}",
        t0.elapsed()
    );
    Ok(())
}

/// The Retry-After of the storm's 429s: neither the double's default (1 s) nor the client's
/// fallback when the header is lost (10 s).
const RETRY_AFTER_SECS: u64 = 3;
/// The 429s the storm answers before the create goes through.
const STORM: u32 = 3;

/// From the double's request log: the create was refused STORM times then made, each attempt
/// waiting out the Retry-After header's value (not the fallback), and nothing else reached the
/// vault within Retry-After of a 429. Returns the gaps between attempts, in ms.
fn creates_waited_out_each_429(log: &[LogEntry]) -> Vec<u64> {
    let creates: Vec<&LogEntry> = log
        .iter()
        .filter(|e| {
            e.authenticated
                && e.host == VAULT_HOST
                && e.method == "POST"
                && e.path == "/keys/storm-key/create"
        })
        .collect();
    let statuses: Vec<Option<u16>> = creates.iter().map(|e| e.status).collect();
    let mut want = vec![Some(429); STORM as usize];
    want.push(Some(200));
    assert_eq!(statuses, want, "create attempts: {creates:?}");
    let gaps: Vec<u64> = creates
        .windows(2)
        .map(|w| w[1].received_ms.saturating_sub(w[0].received_ms))
        .collect();
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= RETRY_AFTER_SECS * 1000,
            "attempt {} came {gap} ms after a 429 asking for {RETRY_AFTER_SECS} s: {gaps:?}",
            i + 2
        );
        // The header's value, not the 10 s the client assumes when the header is lost.
        assert!(
            *gap < 9_000,
            "attempt {} waited {gap} ms: the Retry-After header was not used: {gaps:?}",
            i + 2
        );
    }
    // Nothing else was sent to the vault while it was throttled: no request arrived within
    // Retry-After of a 429.
    for c in creates.iter().filter(|e| e.status == Some(429)) {
        let early: Vec<&LogEntry> = log
            .iter()
            .filter(|e| {
                e.authenticated
                    && e.host == VAULT_HOST
                    && e.seq > c.seq
                    && e.received_ms < c.received_ms + RETRY_AFTER_SECS * 1000
            })
            .collect();
        assert!(early.is_empty(), "sent while throttled: {early:?}");
    }
    gaps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_shows_on_the_binding_is_waited_out_and_makes_one_key_version() -> Result<()> {
    let t0 = Instant::now();
    let env = Environment::start(EnvOptions::default()).await?;
    let ns = "e2e-storm";
    env.create_namespace(ns, true)?;
    env.apply_yaml(&policy_config_map_yaml(ns, "storm-policy", REGO))?;
    let mut storm = Fault::status("POST", "^/keys/storm-key/create$", 429)
        .times(STORM)
        .on_vault(VAULT_HOST);
    storm.retry_after_secs = Some(RETRY_AFTER_SECS);
    env.double.inject(storm)?;
    env.apply_yaml(
        &BindingManifest::new(ns, "storm", "storm-key")
            .ec_p256()
            .deletion("Delete")
            .yaml(),
    )?;

    // The binding says it is throttled ...
    let throttled = env
        .wait_binding_condition(
            ns,
            "storm",
            types::KEY_READY,
            "False",
            Some(reasons::KEY_VAULT_THROTTLED),
            Duration::from_secs(60),
        )
        .await?;
    let ready = Environment::condition(&throttled, types::READY).context("Ready")?;
    assert_eq!(ready.0, "False", "{ready:?}");
    // ... then Ready once the storm is over.
    env.wait_binding_ready(ns, "storm").await?;

    let gaps = creates_waited_out_each_429(&env.double.log());
    assert_eq!(env.key_versions(VAULT_HOST, "storm-key"), 1);
    // One Warning for the throttling, not one per attempt.
    let throttle_events: Vec<_> = events_of(&env, ns, "storm")
        .await?
        .into_values()
        .filter(|(_, reason, _)| reason == reasons::KEY_VAULT_THROTTLED)
        .collect();
    assert_eq!(throttle_events.len(), 1, "{throttle_events:?}");
    assert_eq!(throttle_events[0].2, 1, "{throttle_events:?}");
    eprintln!(
        "429 storm: create gaps {gaps:?} ms (Retry-After {RETRY_AFTER_SECS} s); test done in {:?}",
        t0.elapsed()
    );
    Ok(())
}
