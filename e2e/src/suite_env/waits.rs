//! Waits on what the operator and the control plane do: binding conditions and pods.

use std::time::Duration;

use anyhow::{Result, bail};
use ckb_crds::ConfidentialKeyBinding;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

use super::Environment;
use crate::cluster::wait_for;

impl Environment {
    /// The binding's condition `type_` as `(status, reason, message)`, if present.
    pub fn condition(b: &ConfidentialKeyBinding, type_: &str) -> Option<(String, String, String)> {
        b.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    /// Waits until the binding's condition `type_` has `status` (and `reason`, when given), for
    /// the binding's current generation; returns the binding.
    pub async fn wait_binding_condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> Result<ConfidentialKeyBinding> {
        let api: Api<ConfidentialKeyBinding> = Api::namespaced(self.cp.client(), namespace);
        let what = format!(
            "binding {namespace}/{name} {type_}={status}{}",
            reason.map(|r| format!(" reason={r}")).unwrap_or_default()
        );
        wait_for(timeout, &what, || {
            let api = api.clone();
            async move {
                let Some(b) = api.get_opt(name).await? else {
                    bail!("the binding does not exist");
                };
                let current =
                    b.status.as_ref().and_then(|s| s.observed_generation) == b.metadata.generation;
                match Self::condition(&b, type_) {
                    Some((s, r, m)) => {
                        if current && s == status && reason.is_none_or(|want| want == r) {
                            Ok(Some(b))
                        } else {
                            bail!("{type_}={s} reason={r}: {m}")
                        }
                    }
                    None => Ok(None),
                }
            }
        })
        .await
    }

    /// Waits until the binding is Ready=True and returns it.
    pub async fn wait_binding_ready(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ConfidentialKeyBinding> {
        self.wait_binding_condition(
            namespace,
            name,
            ckb_crds::conditions::types::READY,
            "True",
            None,
            Duration::from_secs(90),
        )
        .await
    }

    /// Waits until exactly `count` pods match `selector` in `namespace` and `check` holds for each.
    pub async fn wait_pods(
        &self,
        namespace: &str,
        selector: &str,
        count: usize,
        timeout: Duration,
        check: impl Fn(&Pod) -> bool,
    ) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.cp.client(), namespace);
        let lp = ListParams::default().labels(selector);
        let check = &check;
        let waited = wait_for(
            timeout,
            &format!("{count} pod(s) {selector} in {namespace}"),
            || {
                let (api, lp) = (api.clone(), lp.clone());
                async move {
                    let pods: Vec<Pod> = api
                        .list(&lp)
                        .await?
                        .items
                        .into_iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .collect();
                    if pods.len() == count && pods.iter().all(check) {
                        Ok(Some(pods))
                    } else {
                        bail!("{} pod(s) found", pods.len())
                    }
                }
            },
        )
        .await;
        // What the controllers and admission said is what explains a missing pod.
        waited.map_err(|e| {
            let events = self
                .kubectl(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"])
                .unwrap_or_else(|e| e.to_string());
            e.context(format!("events in {namespace}:\n{events}"))
        })
    }
}
