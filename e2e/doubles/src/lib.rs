//! Test doubles of Azure Key Vault (exportable HSM keys, release policies, secure key release)
//! and Microsoft Azure Attestation, served over HTTPS on loopback from one listener.
//!
//! They are an independent implementation of the public REST contract (Key Vault data plane
//! 7.4 / 2025-07-01, MAA SEV-SNP tokens), deliberately sharing no code with `ckb-operator`, so that
//! they catch the operator's mistakes rather than repeat them.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ckb_doubles::{Config, KeyVaultDouble};
//! let double = KeyVaultDouble::start(Config::default()).await?;
//! let client = double.client_for(&["demo.vault.azure.net"]);
//! let url = format!("https://demo.vault.azure.net:{}/keys?api-version=7.4", double.addr().port());
//! let status = client.get(url).bearer_auth("operator-token").send().await?.status();
//! assert!(status.is_success());
//! # Ok(()) }
//! ```

pub mod attestation;
pub mod entra;
pub mod faults;
pub mod jose;
pub mod keyvault;
pub mod pki;
pub mod policy;
pub mod server;
pub mod sidecar;

pub use attestation::TokenRequest;
pub use entra::{EntraConfig, FederatedCredential, TrustedIssuer};
pub use faults::{Fault, LogEntry};
pub use keyvault::Permission;
pub use server::{Config, KeyVaultDouble, StartError};
