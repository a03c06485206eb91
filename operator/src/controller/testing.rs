//! Test support: an in-memory Key Vault with a request log and injectable faults, and a mock API
//! server (tower-test) that records every request the controller makes and answers it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use crate::keyvault::{
    DeletedVaultKey, KeyVault, KeyVaultError, NewKey, StoredReleasePolicy, VaultKey, VaultUrl,
};

/// A Key Vault operation, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GET /keys/{name}
    Get,
    /// POST /keys/{name}/create
    Create,
    /// PATCH /keys/{name}/{version}
    Update,
    /// DELETE /keys/{name}
    Delete,
    /// GET /deletedkeys/{name}
    GetDeleted,
    /// POST /deletedkeys/{name}/recover
    Recover,
}

impl Op {
    /// Whether the operation changes the vault.
    pub fn is_write(self) -> bool {
        matches!(self, Op::Create | Op::Update | Op::Delete | Op::Recover)
    }
}

#[derive(Default)]
struct VaultState {
    keys: BTreeMap<String, VaultKey>,
    deleted: BTreeMap<String, DeletedVaultKey>,
    log: Vec<(Op, String)>,
    faults: VecDeque<(Option<Op>, KeyVaultError)>,
    versions: u32,
}

/// An in-memory Key Vault (one vault; names are keys).
#[derive(Default, Clone)]
pub struct FakeVault {
    state: Arc<Mutex<VaultState>>,
}

impl FakeVault {
    fn lock(&self) -> std::sync::MutexGuard<'_, VaultState> {
        self.state.lock().unwrap()
    }

    /// The operations made so far.
    pub fn log(&self) -> Vec<Op> {
        self.lock().log.iter().map(|(o, _)| *o).collect()
    }

    /// The writes made so far.
    pub fn writes(&self) -> Vec<Op> {
        self.log().into_iter().filter(|o| o.is_write()).collect()
    }

    /// Forgets the log.
    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// Makes the next `n` calls of `op` (any op if `None`) fail with `err`.
    pub fn fail_next(&self, op: Option<Op>, n: usize, err: KeyVaultError) {
        let mut s = self.lock();
        for _ in 0..n {
            s.faults.push_back((op, err.clone()));
        }
    }

    /// Puts a key in the vault directly (an out-of-band action).
    pub fn put(&self, key: VaultKey) {
        self.lock().keys.insert(key.name.clone(), key);
    }

    /// The key, if present.
    pub fn key(&self, name: &str) -> Option<VaultKey> {
        self.lock().keys.get(name).cloned()
    }

    /// Whether a soft-deleted key of that name exists.
    pub fn is_deleted(&self, name: &str) -> bool {
        self.lock().deleted.contains_key(name)
    }

    /// Edits a key's release policy directly (an out-of-band edit).
    pub fn set_policy(&self, name: &str, json: &str) {
        if let Some(k) = self.lock().keys.get_mut(name) {
            k.release_policy = Some(StoredReleasePolicy {
                content_type: Some("application/json; charset=utf-8".into()),
                json: json.into(),
                immutable: false,
            });
        }
    }

    fn enter(&self, op: Op, name: &str) -> Result<(), KeyVaultError> {
        let mut s = self.lock();
        s.log.push((op, name.to_string()));
        let pos = s.faults.iter().position(|(o, _)| o.is_none_or(|o| o == op));
        match pos.and_then(|p| s.faults.remove(p)) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

fn not_found(name: &str) -> KeyVaultError {
    KeyVaultError::NotFound {
        message: format!("A key with (name/id) {name} was not found in this key vault."),
    }
}

#[async_trait]
impl KeyVault for FakeVault {
    async fn get_key(&self, _vault: &VaultUrl, name: &str) -> Result<VaultKey, KeyVaultError> {
        self.enter(Op::Get, name)?;
        self.lock()
            .keys
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    async fn create_key(&self, vault: &VaultUrl, key: &NewKey) -> Result<VaultKey, KeyVaultError> {
        self.enter(Op::Create, &key.name)?;
        let mut s = self.lock();
        if s.deleted.contains_key(&key.name) {
            return Err(KeyVaultError::DeletedRecoverable {
                message: "key is in a deleted but recoverable state".into(),
            });
        }
        s.versions += 1;
        let version = format!("v{}", s.versions);
        let k = VaultKey {
            id: format!("{vault}/keys/{}/{version}", key.name),
            name: key.name.clone(),
            version,
            kty: key.kty.clone(),
            size: key.size,
            curve: key.curve.clone(),
            key_ops: key.key_ops.clone(),
            exportable: key.exportable,
            enabled: true,
            tags: key.tags.clone(),
            release_policy: key
                .release_policy_json
                .as_ref()
                .map(|j| StoredReleasePolicy {
                    content_type: Some("application/json; charset=utf-8".into()),
                    json: j.clone(),
                    immutable: false,
                }),
            managed: false,
        };
        s.keys.insert(key.name.clone(), k.clone());
        Ok(k)
    }

    async fn update_key(
        &self,
        _vault: &VaultUrl,
        name: &str,
        version: &str,
        release_policy_json: Option<&str>,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VaultKey, KeyVaultError> {
        self.enter(Op::Update, name)?;
        let mut s = self.lock();
        let k = s.keys.get_mut(name).ok_or_else(|| not_found(name))?;
        if k.version != version {
            return Err(not_found(name));
        }
        if let Some(j) = release_policy_json {
            if k.release_policy.as_ref().is_some_and(|p| p.immutable) {
                return Err(KeyVaultError::ImmutablePolicy {
                    message: "policy is immutable".into(),
                });
            }
            k.release_policy = Some(StoredReleasePolicy {
                content_type: Some("application/json; charset=utf-8".into()),
                json: j.into(),
                immutable: false,
            });
        }
        if let Some(t) = tags {
            k.tags = t.clone();
        }
        Ok(k.clone())
    }

    async fn delete_key(
        &self,
        _vault: &VaultUrl,
        name: &str,
    ) -> Result<DeletedVaultKey, KeyVaultError> {
        self.enter(Op::Delete, name)?;
        let mut s = self.lock();
        let k = s.keys.remove(name).ok_or_else(|| not_found(name))?;
        let d = DeletedVaultKey {
            key: k,
            recovery_id: Some(format!("deletedkeys/{name}")),
            deleted_date: Some(1),
            scheduled_purge_date: Some(2),
        };
        s.deleted.insert(name.into(), d.clone());
        Ok(d)
    }

    async fn get_deleted_key(
        &self,
        _vault: &VaultUrl,
        name: &str,
    ) -> Result<DeletedVaultKey, KeyVaultError> {
        self.enter(Op::GetDeleted, name)?;
        self.lock()
            .deleted
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    async fn recover_deleted_key(
        &self,
        _vault: &VaultUrl,
        name: &str,
    ) -> Result<VaultKey, KeyVaultError> {
        self.enter(Op::Recover, name)?;
        let mut s = self.lock();
        let d = s.deleted.remove(name).ok_or_else(|| not_found(name))?;
        s.keys.insert(name.into(), d.key.clone());
        Ok(d.key)
    }
}

/// One request the controller made to the API server.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// JSON body (Null if none).
    pub body: Value,
}

impl Call {
    /// `"METHOD path"`, for asserting sequences.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A mock API server: answers the requests the controller makes (status apply, finalizer patch,
/// events, ConfigMap reads) and records them.
#[derive(Clone, Default)]
pub struct MockApi {
    calls: Arc<Mutex<Vec<Call>>>,
    config_maps: Arc<Mutex<BTreeMap<String, Value>>>,
}

impl MockApi {
    /// A client whose requests this mock answers.
    pub fn client(&self) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (status, answer) = me.answer(&method, &path, &body);
                me.calls.lock().unwrap().push(Call { method, path, body });
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
        Client::new(svc, "default")
    }

    /// Makes a ConfigMap readable by a direct GET (one the labelled-ConfigMap cache does not hold).
    pub fn serve_config_map(&self, cm: &k8s_openapi::api::core::v1::ConfigMap) {
        let ns = cm.metadata.namespace.clone().unwrap_or_default();
        let name = cm.metadata.name.clone().unwrap_or_default();
        self.config_maps
            .lock()
            .unwrap()
            .insert(format!("{ns}/{name}"), serde_json::to_value(cm).unwrap());
    }

    fn answer(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            ("GET", ["api", "v1", "namespaces", ns, "configmaps", name]) => {
                match self
                    .config_maps
                    .lock()
                    .unwrap()
                    .get(&format!("{ns}/{name}"))
                {
                    Some(cm) => (200, cm.clone()),
                    None => (404, not_found_status(name)),
                }
            }
            ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
                (201, body.clone())
            }
            // The recorder publishes a repeat of an event as a merge PATCH of the first one
            // (a series): answered like the API server does, so repeats are counted, not lost.
            ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => {
                (200, body.clone())
            }
            // A patch of the binding itself answers without status; one of its status
            // subresource echoes the status it was sent.
            (
                "PATCH",
                [
                    "apis",
                    "ckb.dev",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "confidentialkeybindings",
                    name,
                    subresource @ ..,
                ],
            ) if subresource.is_empty() || subresource == ["status"] => {
                let status = (!subresource.is_empty())
                    .then(|| body.get("status").cloned())
                    .flatten();
                (200, binding_json(ns, name, status))
            }
            _ => (404, not_found_status(path)),
        }
    }

    /// The `status` of the bodies of the requests so far whose path ends with `suffix`, copying
    /// nothing else: the throughput figure records thousands of requests, and copying the whole
    /// log on every reconcile made the harness, not the controller, what bounded it.
    pub fn statuses_at(&self, suffix: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path.ends_with(suffix))
            .map(|c| c.body["status"].clone())
            .collect()
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Every request so far as `"METHOD path"`.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Call::line).collect()
    }

    /// Forgets the recorded requests.
    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }

    /// Every publication of an event so far, in order: (type, reason). A first occurrence is a
    /// POST; a repeat of the same event is a PATCH of it (the recorder's de-duplication), and
    /// counts as one more publication.
    pub fn events(&self) -> Vec<(String, String)> {
        self.calls()
            .iter()
            .filter(|c| {
                let parts: Vec<&str> = c.path.trim_start_matches('/').split('/').collect();
                matches!(
                    (c.method.as_str(), parts.as_slice()),
                    (
                        "POST",
                        ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]
                    ) | (
                        "PATCH",
                        ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]
                    )
                )
            })
            .map(|c| {
                let reason = c.body["reason"].as_str().unwrap_or_default().to_string();
                assert!(
                    ckb_crds::conditions::events::is_published(&reason),
                    "event reason {reason:?} is not in the vocabulary (ckb_crds::conditions)"
                );
                (
                    c.body["type"].as_str().unwrap_or_default().to_string(),
                    reason,
                )
            })
            .collect()
    }
}

fn not_found_status(name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
           "message": format!("{name} not found"), "code": 404})
}

fn binding_json(ns: &str, name: &str, status: Option<Value>) -> Value {
    let mut v = json!({
        "apiVersion": "ckb.dev/v1alpha1",
        "kind": "ConfidentialKeyBinding",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "podSelector": {},
            "key": {"vault": "https://demo.vault.azure.net", "name": "k"},
            "attestation": {"authority": "https://a.attest.azure.net"},
            "policy": {"configMapRef": {"name": "p"}}
        }
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    v
}
