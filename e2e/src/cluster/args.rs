//! The command lines of etcd, kube-apiserver and kube-controller-manager, and the files of one run
//! they are started with.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{Result, io_err};
use super::pki::Pki;

/// Service CIDR of the local cluster; its first address (`10.96.0.1`) is the `kubernetes`
/// Service's.
const SERVICE_CIDR: &str = "10.96.0.0/24";
/// Issuer of the ServiceAccount tokens, as in a default cluster.
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Controllers the tests rely on: Deployments make ReplicaSets make Pods, namespaces are deleted,
/// ServiceAccounts exist, owner references are garbage collected, the root CA is published, and
/// the built-in `view`/`edit`/`admin` ClusterRoles get their aggregated rules (the security suite
/// acts as users bound to them).
const CONTROLLERS: &str = "deployment-controller,replicaset-controller,namespace-controller,\
garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,\
root-ca-certificate-publisher-controller,clusterrole-aggregation-controller";

/// The files of one run, written into its directory.
pub(super) struct RunFiles {
    pub(super) ca: PathBuf,
    pub(super) serving_cert: PathBuf,
    pub(super) serving_key: PathBuf,
    pub(super) sa_key: PathBuf,
    pub(super) sa_pub: PathBuf,
    pub(super) tokens: PathBuf,
    /// The audit policy and the log it writes, when requests are audited.
    pub(super) audit: Option<(PathBuf, PathBuf)>,
}

impl RunFiles {
    /// Writes the certificates and keys, a token file with the admin's and the controller
    /// manager's tokens, and the audit policy for `audited_users` (none: no audit log).
    pub(super) fn write(
        root: &Path,
        pki: &Pki,
        admin_token: &str,
        kcm_token: &str,
        audited_users: &[String],
    ) -> Result<Self> {
        let write = |name: &str, body: &str| -> Result<PathBuf> {
            let p = root.join(name);
            fs::write(&p, body).map_err(io_err(format!("writing {}", p.display())))?;
            Ok(p)
        };
        let audit = if audited_users.is_empty() {
            None
        } else {
            let policy = write("audit-policy.yaml", &audit_policy_yaml(audited_users))?;
            Some((policy, root.join("audit.log")))
        };
        Ok(Self {
            ca: write("ca.crt", &pki.ca_cert)?,
            serving_cert: write("apiserver.crt", &pki.serving_cert)?,
            serving_key: write("apiserver.key", &pki.serving_key)?,
            sa_key: write("sa.key", &pki.sa_key)?,
            sa_pub: write("sa.pub", &pki.sa_pub)?,
            tokens: write(
                "tokens.csv",
                &format!(
                    "{admin_token},admin,admin,\"system:masters\"\n\
                     {kcm_token},system:kube-controller-manager,kcm,\"system:masters\"\n"
                ),
            )?,
            audit,
        })
    }
}

/// An audit policy that records every request of `users` at the Metadata level (verb, resource,
/// name, authorization decision; no bodies), and nothing else. A watch is recorded when its
/// response starts, so it is in the log while it still runs.
pub(super) fn audit_policy_yaml(users: &[String]) -> String {
    let users: String = users.iter().map(|u| format!("      - {u:?}\n")).collect();
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages:\n  - RequestReceived\n\
         rules:\n  - level: Metadata\n    users:\n{users}  - level: None\n"
    )
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// etcd on loopback, its data in `<root>/etcd`.
pub(super) fn etcd(root: &Path, client_url: &str, peer_url: &str) -> Vec<String> {
    vec![
        "--name=default".to_string(),
        format!("--data-dir={}", p(&root.join("etcd"))),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        // Test data is thrown away after the run: durability is not worth the fsync cost.
        "--unsafe-no-fsync".to_string(),
        "--log-level=warn".to_string(),
    ]
}

/// kube-apiserver on loopback `port`, with RBAC, token authentication and, when the run has one,
/// the audit log.
pub(super) fn apiserver(root: &Path, files: &RunFiles, etcd_url: &str, port: u16) -> Vec<String> {
    let mut args = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", p(&root.join("apiserver-certs"))),
        format!("--tls-cert-file={}", p(&files.serving_cert)),
        format!("--tls-private-key-file={}", p(&files.serving_key)),
        format!("--client-ca-file={}", p(&files.ca)),
        format!("--token-auth-file={}", p(&files.tokens)),
        "--authorization-mode=Node,RBAC".to_string(),
        format!("--service-account-issuer={SA_ISSUER}"),
        format!("--service-account-key-file={}", p(&files.sa_pub)),
        format!("--service-account-signing-key-file={}", p(&files.sa_key)),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        // Fewer moving parts at startup; nothing here depends on flow control.
        "--enable-priority-and-fairness=false".to_string(),
        "--profiling=false".to_string(),
    ];
    if let Some((policy, log)) = &files.audit {
        args.extend([
            format!("--audit-policy-file={}", p(policy)),
            format!("--audit-log-path={}", p(log)),
            "--audit-log-format=json".to_string(),
            // Written before the response is sent, so a test that reads the log after its
            // requests returned finds them there.
            "--audit-log-mode=blocking".to_string(),
        ]);
    }
    args
}

/// kube-controller-manager with the [`CONTROLLERS`] the tests rely on.
pub(super) fn controller_manager(kubeconfig: &Path, files: &RunFiles) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", p(kubeconfig)),
        "--leader-elect=false".to_string(),
        format!("--service-account-private-key-file={}", p(&files.sa_key)),
        format!("--root-ca-file={}", p(&files.ca)),
        format!("--controllers={CONTROLLERS}"),
        // No HTTPS endpoint: its default port 10257 would clash between parallel runs.
        "--secure-port=0".to_string(),
    ]
}
