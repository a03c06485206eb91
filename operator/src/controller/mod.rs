//! The controller: keeps each binding's Key Vault key and release policy in step with its policy.
//!
//! - [`plan`]: the pure decision (policy resolution, allowed hashes, key checks, status, events),
//!   in parts: `plan_policy` (the ConfigMap and which hash may be bound), `plan_owner` (whose a
//!   key is), `plan_key` (the key and its one write), `plan_settle` (the outcome of the write),
//!   `plan_cleanup` (deletion).
//! - [`hashes`]: which policy hashes a release policy allows.
//! - [`grant`]: the cluster's bounds on what a binding may ask for (grants, or the flags).
//! - [`grant_watch`]: the grants' watch (the grant CRD is optional) and what a grant change
//!   re-plans.
//! - [`status`]: conditions and their transition times.
//! - [`index`]: pure lookups between bindings, policy ConfigMaps and injected pods.
//! - [`reconcile`]: the I/O around the decision, the finalizer, the error policy
//!   (`reconcile_context`: what a reconcile needs, writes and remembers).
//! - [`runtime`]: the shared caches (also read by the webhook) and the controller loop.
//! - [`leader`]: Lease-based leader election.
//! - [`backoff`]: per-binding exponential backoff with jitter.
//!
//! # Behaviour an operator of the operator relies on
//!
//! - **Allow-list.** `--allowed-vault` (`CKB_ALLOWED_VAULTS`) is empty by default, and empty means
//!   *no* vault: every binding then reports `KeyReady=False reason=VaultNotAllowed` and nothing is
//!   sent to any vault, not even on deletion. Bindings are namespaced and can be created by anyone
//!   allowed to create them; without an explicit list they could make the operator's identity
//!   create keys in any vault it can reach.
//! - **Deletion.** The finalizer `confidentialkeybindings.ckb.dev/cleanup` decides the key's fate:
//!   `Retain` leaves it with its tags (a re-created binding finds it again); `Delete` soft-deletes it,
//!   only if its tags still name this binding and cluster. A binding that never got a key
//!   (`status.key` unset) or whose vault is not allowed is released without any Key Vault call. If
//!   Key Vault cannot be reached, or refuses, for `--cleanup-timeout` (default 10m) counted from the
//!   binding's deletion timestamp, the finalizer is released anyway with a Warning event
//!   `CleanupAbandoned` and the key is LEFT IN PLACE (delete it by hand); so no binding stays
//!   Terminating forever. Until then each failure is retried with backoff, and reported once
//!   (`KeyDeleteFailed`).
//! - **Leader election.** A `coordination.k8s.io/v1` Lease (`--leader-election-lease`, default
//!   `ckb-operator`) in the operator's namespace (`CKB_POD_NAMESPACE`), kept by
//!   `kube-lease-manager`: 15 s lease, renewed 5 s before it expires; a leader whose renewal fails
//!   stops its controller then, 5 s before anyone may take over; on SIGTERM the holder finishes
//!   in-flight reconciles (up to 10 s) and gives the Lease up. Only the holder reconciles; every
//!   replica keeps the caches and serves the webhook.
//! - **Pacing.** A converged binding is looked at again every `--resync-period` (10m, ±10%): one
//!   GET, no write unless the key drifted (an out-of-band release-policy edit is restored then).
//!   Watch events in between (pods, ConfigMaps, status) reuse what the last GET verified when
//!   nothing they decide on changed. Steady state is thus about 6 GETs per binding per hour and no
//!   write. Failures retry after 1 s doubling up to `--max-retry-delay` (5m), jittered; a 429 waits
//!   at least its `Retry-After`; creates per vault are paced by the Key Vault client.
//! - **Hashes.** A binding binds the hashes it pins (`spec.policy.sha256`); without pins it
//!   follows its ConfigMap only if its `spec.policy.source` (default `--policy-source-default`,
//!   `Pinned`) is `ConfigMap`. A hash that stops being current or pinned stays bound for
//!   `--hash-grace-period` (10m), then only while qualifying pods created before that run it
//!   (confidential, selected, hash recomputed from the agent-policy annotation), and never longer
//!   than `--hash-retention-ceiling` (24h); a pod never adds a hash. See `docs/security.md`.

use std::collections::BTreeSet;
use std::time::Duration;

pub mod backoff;
pub mod grant;
pub mod grant_watch;
pub mod hashes;
pub mod index;
pub mod leader;
pub mod plan;
mod plan_cleanup;
mod plan_key;
mod plan_owner;
mod plan_policy;
mod plan_settle;
pub mod reconcile;
mod reconcile_context;
pub mod reflectors;
pub mod runtime;
pub mod status;
pub mod uninjected;

#[cfg(test)]
mod double_tests;
#[cfg(test)]
mod grant_watch_tests;
#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod reconcile_tests;
#[cfg(test)]
mod testing;

use crate::keyvault::VaultUrl;

/// Errors in the controller's settings.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A vault in `--allowed-vault` is not an https URL.
    #[error("--allowed-vault {0:?}: {1}")]
    Vault(String, String),
}

/// Controller settings of `ckb-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Vault the operator may create and manage keys in (`https://<name>.vault.azure.net` or
    /// `https://<name>.managedhsm.azure.net`); repeat, or comma-separate in the variable. A binding
    /// naming any other vault gets `KeyReady=False reason=VaultNotAllowed` and its vault is never
    /// contacted. Empty (the default) allows none: the operator touches no vault until told which.
    #[arg(
        long = "allowed-vault",
        env = "CKB_ALLOWED_VAULTS",
        value_delimiter = ','
    )]
    pub allowed_vaults: Vec<String>,

    /// How long a policy hash that stopped being current stays in the release policy (then it
    /// stays only while live injected pods still carry it). E.g. `10m`, `1h`, `90s`.
    #[arg(long, env = "CKB_HASH_GRACE_PERIOD", default_value = "10m", value_parser = crate::duration::parse_duration)]
    pub hash_grace_period: Duration,

    /// Period after which a converged binding is checked again against Key Vault (jittered by
    /// ±10%), which restores release policies edited out of band.
    #[arg(long, env = "CKB_RESYNC_PERIOD", default_value = "10m", value_parser = crate::duration::parse_duration)]
    pub resync_period: Duration,

    /// How long after its deletion a binding with `deletionPolicy: Delete` waits for an
    /// unreachable vault; after that its finalizer is released with a Warning event and the key is
    /// left in place.
    #[arg(long, env = "CKB_CLEANUP_TIMEOUT", default_value = "10m", value_parser = crate::duration::parse_duration)]
    pub cleanup_timeout: Duration,

    /// Longest wait between retries of a failing binding (retries start at 1s and double).
    #[arg(long, env = "CKB_MAX_RETRY_DELAY", default_value = "5m", value_parser = crate::duration::parse_duration)]
    pub max_retry_delay: Duration,

    /// Bindings reconciled at the same time.
    #[arg(long, env = "CKB_MAX_CONCURRENT_RECONCILES", default_value_t = 16)]
    pub max_concurrent_reconciles: u16,

    /// Elect a leader through a Lease (turn off only for a single replica).
    #[arg(long, env = "CKB_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Namespace of the leader Lease: the operator's own.
    #[arg(long, env = "CKB_POD_NAMESPACE", default_value = "ckb-system")]
    pub leader_election_namespace: String,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "CKB_LEADER_ELECTION_LEASE",
        default_value = "ckb-operator"
    )]
    pub leader_election_lease: String,

    /// This replica's identity in the Lease (the pod name; defaults to the host name).
    #[arg(long, env = "CKB_POD_NAME")]
    pub leader_election_identity: Option<String>,

    /// What a binding that pins no hash (`spec.policy.sha256`) and sets no `spec.policy.source`
    /// follows. `Pinned` (the default): nothing; its key is left as it is and the binding says
    /// which hash to pin. `ConfigMap`: the policy ConfigMap's hash, so whoever may write that
    /// ConfigMap (the built-in `edit` role) decides what the key is released to.
    #[arg(
        long = "policy-source-default",
        env = "CKB_POLICY_SOURCE_DEFAULT",
        default_value = "Pinned"
    )]
    pub policy_source_default: ckb_crds::PolicySource,

    /// The longest a policy hash stays in a release policy after it stopped being current or
    /// pinned, even while pods created before that still run it (e.g. `24h`, `168h`).
    #[arg(long, env = "CKB_HASH_RETENTION_CEILING", default_value = "24h", value_parser = crate::duration::parse_duration)]
    pub hash_retention_ceiling: Duration,

    /// Value of the `ckb-cluster` key tag. Defaults to the UID of the `kube-system` namespace,
    /// read once at start; set it only to keep the value across a cluster rebuild.
    #[arg(long, env = "CKB_CLUSTER_ID")]
    pub cluster_id: Option<String>,
}

impl ControllerArgs {
    /// The allow-list, normalised.
    pub fn allowed_vaults(&self) -> Result<BTreeSet<VaultUrl>, ArgsError> {
        self.allowed_vaults
            .iter()
            .filter(|v| !v.trim().is_empty())
            .map(|v| VaultUrl::parse(v).map_err(|e| ArgsError::Vault(v.clone(), e.to_string())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    #[test]
    fn defaults_allow_no_vault_and_flags_repeat() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(cli.args.allowed_vaults().unwrap().is_empty());
        assert_eq!(cli.args.hash_grace_period, Duration::from_secs(600));
        assert_eq!(cli.args.resync_period, Duration::from_secs(600));
        assert!(cli.args.leader_elect);
        assert_eq!(
            cli.args.policy_source_default,
            ckb_crds::PolicySource::Pinned
        );
        assert_eq!(
            cli.args.hash_retention_ceiling,
            Duration::from_secs(24 * 3600)
        );
        let follow = Cli::try_parse_from([
            "x",
            "--policy-source-default",
            "ConfigMap",
            "--hash-retention-ceiling",
            "2h",
        ])
        .unwrap();
        assert_eq!(
            follow.args.policy_source_default,
            ckb_crds::PolicySource::ConfigMap
        );
        assert_eq!(
            follow.args.hash_retention_ceiling,
            Duration::from_secs(7200)
        );
        assert!(Cli::try_parse_from(["x", "--policy-source-default", "Whatever"]).is_err());
        let cli = Cli::try_parse_from([
            "x",
            "--allowed-vault",
            "https://a.vault.azure.net/",
            "--allowed-vault",
            "https://B.managedhsm.azure.net",
            "--leader-elect",
            "false",
        ])
        .unwrap();
        let v = cli.args.allowed_vaults().unwrap();
        assert!(v.contains(&VaultUrl::parse("https://a.vault.azure.net").unwrap()));
        assert!(v.contains(&VaultUrl::parse("https://b.managedhsm.azure.net").unwrap()));
        assert!(!cli.args.leader_elect);
        let bad =
            Cli::try_parse_from(["x", "--allowed-vault", "http://a.vault.azure.net"]).unwrap();
        assert!(bad.args.allowed_vaults().is_err());
    }
}
