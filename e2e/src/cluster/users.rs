//! Users of the control plane other than the admin: ServiceAccount tokens, kubeconfigs and
//! clients for them, and users bound to a built-in role.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use super::ControlPlane;
use super::error::{ClusterError, Result};
use super::kubeconfig::{client_from_kubeconfig, write_kubeconfig};
use super::wait::wait_for;

/// How long a new RoleBinding may take to be seen by the authorizer.
const RBAC_SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

impl ControlPlane {
    /// A token for a ServiceAccount, made by the TokenRequest API (valid for `ttl`).
    pub async fn token_for_service_account(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(ttl.as_secs().max(600) as i64),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer: TokenRequest = api
            .create_subresource("token", name, &PostParams::default(), &request)
            .await?;
        answer
            .status
            .map(|s| s.token)
            .ok_or_else(|| ClusterError::Kubeconfig("TokenRequest answered without a token".into()))
    }

    /// Writes a kubeconfig for a bearer token (in the run directory) and returns its path.
    pub fn kubeconfig_for_token(&self, user: &str, token: &str) -> Result<PathBuf> {
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.root.join(format!("{safe}.kubeconfig"));
        write_kubeconfig(&path, &self.server_url(), &self.ca_pem()?, user, token)?;
        Ok(path)
    }

    /// A client authenticated with a bearer token (for example a ServiceAccount's).
    pub async fn client_for_token(&self, user: &str, token: &str) -> Result<kube::Client> {
        let path = self.kubeconfig_for_token(user, token)?;
        client_from_kubeconfig(&path).await
    }

    /// A new ServiceAccount `name` of `ns` bound (RoleBinding `<name>-<role>`) to the built-in
    /// ClusterRole `role` (`view`, `edit` or `admin`) there, and a client authenticated as it,
    /// returned once the binding has taken effect (the user may list the namespace's pods, which
    /// each of these roles allows).
    pub async fn user_bound_to(
        &self,
        ns: &str,
        name: &str,
        role: &str,
    ) -> anyhow::Result<kube::Client> {
        let meta = |n: String| ObjectMeta {
            name: Some(n),
            namespace: Some(ns.to_string()),
            ..Default::default()
        };
        let pp = PostParams::default();
        let account = ServiceAccount {
            metadata: meta(name.to_string()),
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .create(&pp, &account)
            .await?;
        let binding = RoleBinding {
            metadata: meta(format!("{name}-{role}")),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_string(),
                kind: "ClusterRole".to_string(),
                name: role.to_string(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_string(),
                name: name.to_string(),
                namespace: Some(ns.to_string()),
                ..Default::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(self.client.clone(), ns)
            .create(&pp, &binding)
            .await?;
        let token = self
            .token_for_service_account(ns, name, Duration::from_secs(3600))
            .await?;
        let client = self
            .client_for_token(&format!("system:serviceaccount:{ns}:{name}"), &token)
            .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        wait_for(
            RBAC_SETTLE_TIMEOUT,
            &format!("the {role} RoleBinding of {ns}/{name} to take effect"),
            || {
                let pods = pods.clone();
                async move {
                    Ok(pods
                        .list(&ListParams::default().limit(1))
                        .await
                        .ok()
                        .map(|_| ()))
                }
            },
        )
        .await?;
        Ok(client)
    }
}
