//! The local control plane itself: what the other e2e tests and the demo rely on.
//!
//! - Deployments become Pods (kube-controller-manager runs);
//! - RBAC is enforced: a ServiceAccount token gets exactly what its Role grants, nothing more;
//! - a watch keeps delivering across an API server restart;
//! - stopping removes every process and the run directory.
//!
//! Needs the local control plane (`e2e/scripts/build-control-plane.sh`); fails, never skips,
//! without it.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ckb_e2e::cluster::{ControlPlane, wait_for};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

fn named(name: &str, ns: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ns.map(str::to_string),
        ..Default::default()
    }
}

/// Deployment -> ReplicaSet -> Pod (Pending: there is no kubelet, which is fine here): a
/// Deployment of 2 replicas in `ns` makes 2 pods.
async fn deployment_makes_its_pods(client: &kube::Client, ns: &str) -> Result<()> {
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}
            }
        }
    }))?;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deploy)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        Duration::from_secs(60),
        "2 pods of the Deployment",
        async || {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            Ok((list.items.len() == 2).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// A ServiceAccount `reader` of `ns` allowed (Role and RoleBinding) to get and list ConfigMaps of
/// its namespace, and nothing else.
async fn configmap_reader_service_account(client: &kube::Client, ns: &str) -> Result<()> {
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: named("reader", Some(ns)),
                ..Default::default()
            },
        )
        .await?;
    Api::<Role>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &Role {
                metadata: named("configmap-reader", Some(ns)),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["configmaps".into()]),
                    verbs: vec!["get".into(), "list".into()],
                    ..Default::default()
                }]),
            },
        )
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: named("reader", Some(ns)),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "configmap-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "reader".into(),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }]),
            },
        )
        .await?;
    Ok(())
}

/// The reader lists ConfigMaps of its namespace; listing Secrets, listing ConfigMaps of another
/// namespace and creating a ConfigMap are each refused with 403.
async fn the_reader_gets_exactly_what_its_role_grants(
    reader: &kube::Client,
    ns: &str,
) -> Result<()> {
    Api::<ConfigMap>::namespaced(reader.clone(), ns)
        .list(&ListParams::default())
        .await
        .context("the Role grants listing ConfigMaps")?;
    for (what, result) in [
        (
            "list Secrets",
            Api::<Secret>::namespaced(reader.clone(), ns)
                .list(&ListParams::default())
                .await
                .map(|_| ()),
        ),
        (
            "list ConfigMaps of another namespace",
            Api::<ConfigMap>::namespaced(reader.clone(), "default")
                .list(&ListParams::default())
                .await
                .map(|_| ()),
        ),
        (
            "create a ConfigMap",
            Api::<ConfigMap>::namespaced(reader.clone(), ns)
                .create(
                    &PostParams::default(),
                    &ConfigMap {
                        metadata: named("nope", Some(ns)),
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ()),
        ),
    ] {
        match result {
            Err(kube::Error::Api(e)) if e.code == 403 => {}
            other => bail!("{what} as the ServiceAccount: expected 403 Forbidden, got {other:?}"),
        }
    }
    Ok(())
}

/// The kubeconfig written for the token is what an out-of-cluster operator would use: kubectl
/// with it is the ServiceAccount.
fn the_token_s_kubeconfig_is_the_service_account(cp: &ControlPlane, token: &str) -> Result<()> {
    let kubeconfig = cp.kubeconfig_for_token("reader", token)?;
    let out = std::process::Command::new(cp.bin_dir().join("kubectl"))
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "system:serviceaccount:team:reader",
        "kubectl with the token's kubeconfig is not the ServiceAccount: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_make_pods_and_rbac_is_enforced() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client();
    let ns = "team";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: named(ns, None),
                ..Default::default()
            },
        )
        .await?;

    deployment_makes_its_pods(&client, ns).await?;
    configmap_reader_service_account(&client, ns).await?;
    let token = cp
        .token_for_service_account(ns, "reader", Duration::from_secs(3600))
        .await?;
    let reader = cp
        .client_for_token("system:serviceaccount:team:reader", &token)
        .await?;

    the_reader_gets_exactly_what_its_role_grants(&reader, ns).await?;
    the_token_s_kubeconfig_is_the_service_account(&cp, &token)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_after_an_apiserver_restart_and_stop_cleans_up() -> Result<()> {
    let mut cp = ControlPlane::start().await?;
    let client = cp.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(cms.clone(), watcher::Config::default()).applied_objects();
    let watch = tokio::spawn(async move {
        let mut stream = stream.boxed();
        // Errors while the API server is down are expected; the watcher retries with backoff.
        loop {
            match stream.try_next().await {
                Ok(Some(cm)) => {
                    if tx.send(cm.metadata.name.unwrap_or_default()).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    let seen = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, name: &str| {
        tokio::time::timeout(Duration::from_secs(90), async {
            while let Some(n) = rx.recv().await {
                if n == name {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    };

    let cm = |name: &str| ConfigMap {
        metadata: named(name, None),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm("before")).await?;
    ensure!(
        seen(&mut rx, "before").await,
        "watch did not deliver 'before'"
    );

    cp.restart_apiserver().await?;
    cms.create(&PostParams::default(), &cm("after")).await?;
    ensure!(
        seen(&mut rx, "after").await,
        "watch did not deliver 'after' once the API server was back"
    );
    watch.abort();

    let dir = cp.dir().to_path_buf();
    let logs = cp.logs();
    cp.stop();
    ensure!(!dir.exists(), "{} still exists after stop", dir.display());
    // Each log named its process; none of them may still be running.
    let out = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()?;
    let running = String::from_utf8_lossy(&out.stdout);
    let leftover: Vec<_> = running
        .lines()
        .filter(|l| l.contains(dir.to_string_lossy().as_ref()))
        .collect();
    ensure!(
        leftover.is_empty(),
        "processes of the stopped control plane ({:?}) still run: {leftover:?}",
        logs.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    Ok(())
}
