//! The doubles' configuration: tenant, tokens and their permissions, API versions, limits,
//! certificate names, where authorities are reached, the Entra double.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::entra::EntraConfig;
use crate::keyvault::Permission;
use crate::keyvault::throttle::ThrottleLimits;
use crate::pki::DEFAULT_SANS;

/// The tenant named in the 401 challenge by default (any GUID-shaped value works for clients).
pub const DEFAULT_TENANT: &str = "72f988bf-0000-4000-8000-00000000c4b0";

/// Configuration of the doubles.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (127.0.0.1 with port 0 by default).
    pub listen: SocketAddr,
    /// Tenant in the challenge's `authorization` URL.
    pub tenant: String,
    /// Known bearer tokens and their permissions.
    pub tokens: BTreeMap<String, BTreeSet<Permission>>,
    /// Strict: only the tokens above are accepted. Permissive (default): any other bearer token
    /// has every permission, so that any test credential works for the demo.
    pub strict_auth: bool,
    /// Accepted `api-version` values.
    pub api_versions: Vec<String>,
    /// Throttling limits of every vault.
    pub throttle: ThrottleLimits,
    /// Subject alternative names of the serving certificate.
    pub sans: Vec<String>,
    /// Where the release operation reaches attestation authorities: host suffix (or host) ->
    /// address. Empty: every `*.attest.azure.net` host is this process.
    pub authority_resolve: Vec<(String, SocketAddr)>,
    /// Extra CA certificates (PEM) trusted when fetching an authority's keys, besides our own CA.
    pub extra_trust_pem: Vec<String>,
    /// The Entra ID token endpoint double, served on `login.microsoftonline.com`: its tenant,
    /// trusted issuers and federated identity credentials.
    pub entra: EntraConfig,
    /// Permissions of the applications (client ids) holding an access token of the Entra double.
    /// An application not listed has every permission, unless `strict_auth`.
    pub entra_permissions: BTreeMap<String, BTreeSet<Permission>>,
}

impl Default for Config {
    fn default() -> Self {
        let mut tokens = BTreeMap::new();
        tokens.insert(
            "operator-token".to_owned(),
            [
                Permission::Get,
                Permission::List,
                Permission::Create,
                Permission::Update,
                Permission::Delete,
                Permission::Recover,
            ]
            .into_iter()
            .collect(),
        );
        tokens.insert(
            "release-token".to_owned(),
            [Permission::Release].into_iter().collect(),
        );
        tokens.insert(
            "admin-token".to_owned(),
            Permission::ALL.into_iter().collect(),
        );
        tokens.insert(
            "reader-token".to_owned(),
            [Permission::Get].into_iter().collect(),
        );
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tenant: DEFAULT_TENANT.to_owned(),
            tokens,
            strict_auth: false,
            api_versions: vec!["7.4".to_owned(), "2025-07-01".to_owned()],
            throttle: ThrottleLimits::default(),
            sans: DEFAULT_SANS.iter().map(|s| (*s).to_owned()).collect(),
            authority_resolve: Vec::new(),
            extra_trust_pem: Vec::new(),
            entra: EntraConfig::new(DEFAULT_TENANT),
            entra_permissions: BTreeMap::new(),
        }
    }
}
