//! The [`KeyVault`] contract on the SDK client.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::http::RequestContent;
use azure_security_keyvault_keys::KeyClient;
use azure_security_keyvault_keys::models::{KeyReleasePolicy, UpdateKeyPropertiesParameters};

use super::sdk::{deleted_vault_key, vault_key};
use super::{AzureKeyVault, Op, POLICY_CONTENT_TYPE};
use crate::keyvault::{DeletedVaultKey, KeyVault, KeyVaultError, NewKey, VaultKey, VaultUrl};

#[async_trait]
impl KeyVault for AzureKeyVault {
    async fn get_key(&self, vault: &VaultUrl, name: &str) -> Result<VaultKey, KeyVaultError> {
        self.get_key_with_created(vault, name).await.map(|(k, _)| k)
    }

    /// Creates the key; a lost answer is resolved by a read before any second create (see
    /// [`AzureKeyVault::create_resolving_lost_answers`]).
    async fn create_key(&self, vault: &VaultUrl, key: &NewKey) -> Result<VaultKey, KeyVaultError> {
        self.create_resolving_lost_answers(vault, key).await
    }

    async fn update_key(
        &self,
        vault: &VaultUrl,
        name: &str,
        version: &str,
        release_policy_json: Option<&str>,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VaultKey, KeyVaultError> {
        let params = UpdateKeyPropertiesParameters {
            release_policy: release_policy_json.map(|json| KeyReleasePolicy {
                content_type: Some(POLICY_CONTENT_TYPE.into()),
                encoded_policy: Some(json.as_bytes().to_vec()),
                immutable: None,
            }),
            tags: tags.map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            ..Default::default()
        };
        let (name, version) = (name.to_owned(), version.to_owned());
        self.call(
            vault,
            Op::Update,
            |c| {
                let (name, version, params) = (name.clone(), version.clone(), params.clone());
                async move {
                    let body: RequestContent<UpdateKeyPropertiesParameters> = params.try_into()?;
                    let options =
                        azure_security_keyvault_keys::models::KeyClientUpdateKeyPropertiesOptions {
                            key_version: Some(version),
                            ..Default::default()
                        };
                    c.update_key_properties(&name, body, Some(options)).await
                }
            },
            vault_key,
        )
        .await
    }

    async fn delete_key(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<DeletedVaultKey, KeyVaultError> {
        let send = |c: Arc<KeyClient>, name: String| async move { c.delete_key(&name, None).await };
        self.call_named(vault, Op::Delete, name, send, deleted_vault_key)
            .await
    }

    async fn get_deleted_key(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<DeletedVaultKey, KeyVaultError> {
        let send =
            |c: Arc<KeyClient>, name: String| async move { c.get_deleted_key(&name, None).await };
        self.call_named(vault, Op::GetDeleted, name, send, deleted_vault_key)
            .await
    }

    async fn recover_deleted_key(
        &self,
        vault: &VaultUrl,
        name: &str,
    ) -> Result<VaultKey, KeyVaultError> {
        let send = |c: Arc<KeyClient>, name: String| async move {
            c.recover_deleted_key(&name, None).await
        };
        self.call_named(vault, Op::Recover, name, send, vault_key)
            .await
    }
}
