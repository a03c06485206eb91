//! Which namespace a Key Vault call is made for, and its share of the operator's limits: carried
//! by a task-local around each reconcile, so the client's methods stay unaware of it.

/// The namespace a call is made for, and its share (percent) of the operator's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NamespaceShare {
    pub(super) namespace: String,
    pub(super) percent: u32,
}

tokio::task_local! {
    static NAMESPACE_SHARE: NamespaceShare;
}

/// Runs `fut` with its Key Vault calls counted against `namespace`'s share (`percent` of the
/// operator's per-vault limits, at least one call per window).
///
/// NB: a task-local rather than a parameter of every [`crate::keyvault::KeyVault`] method: the share is a
/// property of who the reconcile works for, not of the call, and the client stays unaware of it.
pub async fn with_namespace_share<F: std::future::Future>(
    namespace: &str,
    percent: u32,
    fut: F,
) -> F::Output {
    NAMESPACE_SHARE
        .scope(
            NamespaceShare {
                namespace: namespace.to_owned(),
                percent: percent.clamp(1, 100),
            },
            fut,
        )
        .await
}

/// The share of the reconcile this call runs in, if any.
pub(super) fn current_share() -> Option<NamespaceShare> {
    NAMESPACE_SHARE.try_with(Clone::clone).ok()
}

/// A namespace's part of `limit`: `percent` of it, at least 1.
pub fn share_of(limit: u32, percent: u32) -> u32 {
    ((u64::from(limit) * u64::from(percent.min(100))) / 100).max(1) as u32
}
