//! Creates whose answer was lost: resolved by a read before any second create, so a retried
//! create never makes a second key version.

use std::time::SystemTime;

use azure_core::http::RequestContent;
use azure_security_keyvault_keys::models::{CreateKeyParameters, Key};

use super::sdk::{create_parameters, vault_key};
use super::{AzureKeyVault, CREATE_CLOCK_SKEW, Op};
use crate::keyvault::{KeyVaultError, NewKey, VaultKey, VaultUrl};

impl AzureKeyVault {
    pub(super) async fn get_key_with_created(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<(VaultKey, Option<i64>), KeyVaultError> {
        self.call_named(
            vault,
            Op::Get,
            name,
            |c, name| async move { c.get_key(&name, None).await },
            |key: Key| {
                let created = key
                    .attributes
                    .as_ref()
                    .and_then(|a| a.created)
                    .map(|t| t.unix_timestamp());
                vault_key(key).map(|k| (k, created))
            },
        )
        .await
    }

    /// After a create whose answer was lost: `Some(key)` when the key has a version made by it (or
    /// at least not older than it), `None` when the create did not apply.
    async fn find_created_version(
        &self,
        vault: &VaultUrl,
        name: &str,
        sent_at: SystemTime,
    ) -> Result<Option<VaultKey>, KeyVaultError> {
        let earliest = sent_at
            .checked_sub(CREATE_CLOCK_SKEW)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        match self.get_key_with_created(vault, name).await {
            // A version without a creation time is taken as ours: a missing version is repaired by
            // the next reconcile, an extra one never can be.
            Ok((key, created)) if created.is_none_or(|c| c >= earliest) => Ok(Some(key)),
            Ok(_) => Ok(None),
            Err(KeyVaultError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn pending_create(&self, key: &(String, String)) -> Option<SystemTime> {
        self.pending_creates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    fn set_pending_create(&self, key: (String, String), at: Option<SystemTime>) {
        let mut pending = self
            .pending_creates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match at {
            Some(at) => {
                pending.insert(key, at);
            }
            None => {
                pending.remove(&key);
            }
        }
    }

    async fn create_once(&self, vault: &VaultUrl, key: &NewKey) -> Result<VaultKey, KeyVaultError> {
        let params = create_parameters(key);
        let name = key.name.clone();
        self.call(
            vault,
            Op::Create,
            |c| {
                let name = name.clone();
                let params = params.clone();
                async move {
                    let body: RequestContent<CreateKeyParameters> = params.try_into()?;
                    c.create_key(&name, body, None).await
                }
            },
            vault_key,
        )
        .await
    }

    /// Creates the key. A create whose answer is lost (timeout, reset, 5xx) is followed by a GET
    /// before anything else: if the key now has a version made by it, that version is returned as
    /// the result; if not, the error says the create did not apply (`outcome_unknown: false`) and
    /// the caller may create again. If even the GET fails, the create stays pending and the next
    /// `create_key` of that key in this process GETs first instead of creating, so a retried create
    /// never makes a second version.
    pub(super) async fn create_resolving_lost_answers(
        &self,
        vault: &VaultUrl,
        key: &NewKey,
    ) -> Result<VaultKey, KeyVaultError> {
        let pending_key = (vault.host().to_owned(), key.name.clone());
        if let Some(sent_at) = self.pending_create(&pending_key) {
            match self.find_created_version(vault, &key.name, sent_at).await? {
                Some(existing) => {
                    self.set_pending_create(pending_key, None);
                    return Ok(existing);
                }
                None => self.set_pending_create(pending_key.clone(), None),
            }
        }
        let sent_at = SystemTime::now();
        match self.create_once(vault, key).await {
            Err(KeyVaultError::Transient {
                message,
                outcome_unknown: true,
            }) => {
                self.set_pending_create(pending_key.clone(), Some(sent_at));
                tracing::warn!(vault = %vault, key = %key.name, %message, "create answer lost; reading the key before any new create");
                match self.find_created_version(vault, &key.name, sent_at).await {
                    Ok(Some(created)) => {
                        self.set_pending_create(pending_key, None);
                        Ok(created)
                    }
                    Ok(None) => {
                        self.set_pending_create(pending_key, None);
                        Err(KeyVaultError::Transient {
                            message: format!(
                                "{message} (the key was read afterwards: the create did not apply)"
                            ),
                            outcome_unknown: false,
                        })
                    }
                    Err(read_error) => Err(KeyVaultError::Transient {
                        message: format!(
                            "{message} (reading the key afterwards failed too: {read_error}; the next create reads first)"
                        ),
                        outcome_unknown: true,
                    }),
                }
            }
            other => other,
        }
    }
}
