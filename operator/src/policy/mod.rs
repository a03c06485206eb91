//! The pure core: the agent policy hash and the Key Vault release policy. No I/O.
//!
//! - [`hash`]: SHA-256 of the decoded Rego bytes of an agent policy ([`hash::PolicyHash`]), the
//!   value SEV-SNP `HOST_DATA` holds and MAA reports as `x-ms-sevsnpvm-hostdata`.
//! - [`release`]: the release policy a key carries ([`release::ReleasePolicy`]), built from a
//!   binding and a set of hashes, parsed back from Key Vault, compared by meaning.

pub mod hash;
pub mod release;
mod release_parse;

pub use hash::{HashError, PolicyHash, hash_annotation, hash_rego};
pub use release::{ReleasePolicy, ReleasePolicyError};
