//! `ckb-operator run`: the operator process. Every replica serves the webhook and the probes and
//! keeps the shared caches; the replica holding the Lease also runs the controller.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::runtime::events::{Recorder, Reporter};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::caches::Caches;
use crate::controller::grant::ClusterBounds;
use crate::controller::leader::LeaseSettings;
use crate::controller::plan::PlanConfig;
use crate::controller::reconcile::{Context, Timing};
use crate::controller::runtime::{Elected, cluster_uid, reflectors, run_elected};
use crate::keyvault::{AzureKeyVault, KeyVault, VaultUrl};
use crate::telemetry::{self, ControllerMetrics, Readiness};
use crate::webhook::{StoreSources, WebhookMetrics, WebhookState};

/// Arguments of `ckb-operator run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Key Vault client settings.
    #[command(flatten)]
    pub keyvault: crate::keyvault::KeyVaultArgs,
    /// Controller settings.
    #[command(flatten)]
    pub controller: crate::controller::ControllerArgs,
    /// Bounds on what bindings without a grant may ask for, and the per-namespace rate share.
    #[command(flatten)]
    pub bounds: crate::controller::grant::BoundsArgs,
    /// Webhook settings.
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
    /// Logging, metrics and probes.
    #[command(flatten)]
    pub telemetry: telemetry::TelemetryArgs,
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // NB: the SIGTERM handler is installed before anything else, so that a stop request that
    // comes early is a graceful shutdown rather than the default action (immediate death).
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    telemetry::init_logging(args.telemetry.log_format, &args.telemetry.log_level)?;
    let vault = AzureKeyVault::from_args(&args.keyvault).context("Key Vault client")?;
    let mut registry = telemetry::registry();
    vault.metrics().register(&mut registry);
    let client = kube::Client::try_default()
        .await
        .context("Kubernetes client (in-cluster config or KUBECONFIG)")?;
    operate(
        args,
        client,
        Arc::new(vault),
        registry,
        shutdown_signal(term),
    )
    .await
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal(mut term: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
}

fn identity(args: &crate::controller::ControllerArgs) -> String {
    args.leader_election_identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("ckb-operator-{:08x}", rand::random::<u32>()))
}

/// What `operate` checks and reads before it starts anything.
struct Settings {
    allowed_vaults: BTreeSet<VaultUrl>,
    bounds: ClusterBounds,
    cluster: String,
}

/// Everything once the clients exist: caches, webhook, probes, and the controller on the leader.
/// Returns after `shutdown` resolves and the parts have stopped.
pub async fn operate(
    args: RunArgs,
    client: kube::Client,
    vault: Arc<dyn KeyVault>,
    mut registry: prometheus_client::registry::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = settings(&args, &client).await?;

    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop_on_signal.cancel();
    });

    let metrics = ControllerMetrics::register(&mut registry);
    let webhook_metrics = WebhookMetrics::default();
    webhook_metrics.register(&mut registry);

    // Caches: on every replica (the webhook reads them).
    let (caches, triggers, driver) = reflectors(client.clone());
    let reflector_task = tokio::spawn(driver);

    // Readiness: caches listed and the webhook serving its certificate.
    let readiness = Readiness::default();
    readiness.require("caches");
    readiness.require("webhook");
    let webhook_state = WebhookState::new();
    spawn_readiness(&readiness, &caches, &webhook_state, &stop);

    // Webhook, probes and metrics: on every replica.
    let sources = Arc::new(StoreSources::new(
        caches.bindings.clone(),
        caches.config_maps.clone(),
        client.clone(),
    ));
    let webhook = spawn_webhook(
        &args,
        &client,
        sources,
        webhook_metrics,
        webhook_state,
        &stop,
    );
    let probes = spawn_probes(&args, registry, readiness, &stop);

    // Controller: on the leader.
    let c = &args.controller;
    let id = identity(c);
    let ctx = controller_context(&args, &client, vault, settings, metrics, &caches, &id);
    let election = c.leader_elect.then(|| {
        LeaseSettings::operator(
            c.leader_election_namespace.clone(),
            c.leader_election_lease.clone(),
            id,
        )
    });
    run_elected(
        Elected {
            client,
            ctx,
            caches,
            triggers,
            election,
            concurrency: c.max_concurrent_reconciles.max(1),
            drain: Duration::from_secs(10),
        },
        stop.clone(),
    )
    .await;

    // Shutdown: the controller has drained and released the Lease; stop the rest.
    stop.cancel();
    reflector_task.abort();
    stopped(webhook, probes).await
}

/// Waits (bounded) for the webhook and the probes to stop, and returns the first failure.
async fn stopped(
    webhook: tokio::task::JoinHandle<Result<(), crate::webhook::WebhookError>>,
    probes: tokio::task::JoinHandle<Result<(), telemetry::Error>>,
) -> anyhow::Result<()> {
    let webhook_result = tokio::time::timeout(Duration::from_secs(10), webhook).await;
    let probes_result = tokio::time::timeout(Duration::from_secs(5), probes).await;
    info!("stopped");
    if let Ok(Ok(Err(e))) = webhook_result {
        return Err(e).context("webhook");
    }
    if let Ok(Ok(Err(e))) = probes_result {
        return Err(e).context("metrics server");
    }
    Ok(())
}

/// The allow-list, the bounds of bindings without a grant and the cluster's UID, with a warning
/// for each setting that weakens the defaults.
async fn settings(args: &RunArgs, client: &kube::Client) -> anyhow::Result<Settings> {
    let c = &args.controller;
    let allowed_vaults = c.allowed_vaults()?;
    if allowed_vaults.is_empty() {
        warn!(
            "no --allowed-vault given: no vault will be contacted, every binding reports VaultNotAllowed"
        );
    }
    let bounds = args
        .bounds
        .bounds()
        .map_err(|e| anyhow::anyhow!(e))
        .context("cluster bounds")?;
    info!(
        authorities = ?bounds.authorities,
        compliance = ?bounds.compliance_statuses,
        allow_debuggable = bounds.allow_debuggable,
        require_grant = bounds.require_grant,
        namespace_share_percent = bounds.namespace_share_percent,
        "bounds of bindings without a grant"
    );
    let cluster = cluster_uid(client, c.cluster_id.as_deref())
        .await
        .context("reading the kube-system namespace UID (the ckb-cluster tag)")?;
    info!(cluster = %cluster, vaults = ?allowed_vaults, "starting");
    if c.policy_source_default == ckb_crds::PolicySource::ConfigMap {
        warn!(
            "--policy-source-default ConfigMap: bindings without spec.policy.sha256 follow their \
             ConfigMap, so whoever may write it (the built-in edit role) decides what their keys \
             are released to"
        );
    }
    Ok(Settings {
        allowed_vaults,
        bounds,
        cluster,
    })
}

/// Marks "caches" ready once they have listed, then follows the webhook's certificate state.
fn spawn_readiness(
    readiness: &Readiness,
    caches: &Caches,
    state: &WebhookState,
    stop: &CancellationToken,
) {
    let (readiness, caches, state, stop) = (
        readiness.clone(),
        caches.clone(),
        state.clone(),
        stop.clone(),
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = caches.wait_until_ready() => readiness.set("caches", true),
            _ = stop.cancelled() => return,
        }
        info!("caches synced");
        loop {
            readiness.set("webhook", state.is_ready());
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
}

/// The webhook server; its failure stops the process.
fn spawn_webhook(
    args: &RunArgs,
    client: &kube::Client,
    sources: Arc<StoreSources>,
    metrics: WebhookMetrics,
    state: WebhookState,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), crate::webhook::WebhookError>> {
    let stop = stop.clone();
    let client = client.clone();
    let mut args = args.webhook.clone();
    // The pod's own namespace in the cluster (kube reads the ServiceAccount's), the
    // kubeconfig context's outside.
    args.namespace
        .get_or_insert_with(|| client.default_namespace().to_string());
    tokio::spawn(async move {
        let r = crate::webhook::serve(
            args,
            Some(client),
            sources,
            metrics,
            state,
            stop.clone().cancelled_owned(),
        )
        .await;
        if let Err(e) = &r {
            error!(error = %e, "webhook failed; stopping");
            stop.cancel();
        }
        r
    })
}

/// The probes and metrics server; its failure stops the process.
fn spawn_probes(
    args: &RunArgs,
    registry: prometheus_client::registry::Registry,
    readiness: Readiness,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), telemetry::Error>> {
    let stop = stop.clone();
    let router = telemetry::router(Arc::new(registry), readiness);
    let addr = args.telemetry.metrics_addr;
    tokio::spawn(async move {
        let r = telemetry::serve(addr, router, stop.clone(), None).await;
        if let Err(e) = &r {
            error!(error = %e, "metrics server failed; stopping");
            stop.cancel();
        }
        r
    })
}

/// The reconciler's context: its settings, timings, caches, event recorder and metrics.
fn controller_context(
    args: &RunArgs,
    client: &kube::Client,
    vault: Arc<dyn KeyVault>,
    settings: Settings,
    metrics: ControllerMetrics,
    caches: &Caches,
    id: &str,
) -> Arc<Context> {
    let c = &args.controller;
    let runtime_classes = &args.webhook.mutation.runtime.confidential_runtime_classes;
    let ctx = Context::new(
        client.clone(),
        vault,
        PlanConfig {
            allowed_vaults: settings.allowed_vaults,
            hash_grace: c.hash_grace_period,
            cluster_uid: settings.cluster,
            policy_source_default: c.policy_source_default,
            retention_ceiling: c.hash_retention_ceiling,
            confidential_runtime_classes: runtime_classes.clone(),
            bounds: settings.bounds,
        },
        Timing {
            resync: c.resync_period,
            cleanup_timeout: c.cleanup_timeout,
            backoff_base: Duration::from_secs(1),
            backoff_max: c.max_retry_delay,
        },
        caches.config_maps.clone(),
        caches.pods.clone(),
        Recorder::new(
            client.clone(),
            Reporter {
                controller: ckb_crds::FIELD_MANAGER.into(),
                instance: Some(id.to_string()),
            },
        ),
        metrics,
        Arc::new(jiff::Timestamp::now),
    )
    .with_grants(caches.grants.clone());
    ctx.uninjected.set_runtime_classes(runtime_classes.clone());
    Arc::new(ctx)
}
