//! Request paths of the key API, parsed by hand rather than by a router because the official SDK
//! keeps empty segments when no version is given (`GET /keys/k1/`, `POST /keys/k1//release`).

use super::Permission;

/// A key operation and its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /keys`.
    ListKeys,
    /// `GET /keys/{name}[/{version}]`.
    GetKey {
        /// Key name.
        name: String,
        /// Version, `None` for the latest.
        version: Option<String>,
    },
    /// `GET /keys/{name}/versions`.
    ListVersions {
        /// Key name.
        name: String,
    },
    /// `POST /keys/{name}/create`.
    Create {
        /// Key name.
        name: String,
    },
    /// `PATCH /keys/{name}[/{version}]`.
    Update {
        /// Key name.
        name: String,
        /// Version, `None` for the latest.
        version: Option<String>,
    },
    /// `DELETE /keys/{name}`.
    Delete {
        /// Key name.
        name: String,
    },
    /// `POST /keys/{name}[/{version}]/release`.
    Release {
        /// Key name.
        name: String,
        /// Version, `None` for the latest.
        version: Option<String>,
    },
    /// `GET /deletedkeys/{name}`.
    GetDeleted {
        /// Key name.
        name: String,
    },
    /// `POST /deletedkeys/{name}/recover`.
    Recover {
        /// Key name.
        name: String,
    },
    /// `DELETE /deletedkeys/{name}`.
    Purge {
        /// Key name.
        name: String,
    },
}

impl Route {
    /// Parses a method and a path (without query). `None` when no key operation matches.
    pub fn parse(method: &str, path: &str) -> Option<Self> {
        let mut segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        // One trailing slash is what the SDK sends for "no version"; treat it as absent.
        if segs.len() > 1 && segs.last() == Some(&"") {
            segs.pop();
        }
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let name = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let route = match (method, segs.as_slice()) {
            ("GET", ["keys"]) => Self::ListKeys,
            ("GET", ["keys", n]) => Self::GetKey {
                name: name(n)?,
                version: None,
            },
            ("GET", ["keys", n, "versions"]) => Self::ListVersions { name: name(n)? },
            ("GET", ["keys", n, v]) => Self::GetKey {
                name: name(n)?,
                version: opt(v),
            },
            ("POST", ["keys", n, "create"]) => Self::Create { name: name(n)? },
            ("PATCH", ["keys", n]) => Self::Update {
                name: name(n)?,
                version: None,
            },
            ("PATCH", ["keys", n, v]) => Self::Update {
                name: name(n)?,
                version: opt(v),
            },
            ("DELETE", ["keys", n]) => Self::Delete { name: name(n)? },
            ("POST", ["keys", n, "release"]) => Self::Release {
                name: name(n)?,
                version: None,
            },
            ("POST", ["keys", n, v, "release"]) => Self::Release {
                name: name(n)?,
                version: opt(v),
            },
            ("GET", ["deletedkeys", n]) => Self::GetDeleted { name: name(n)? },
            ("POST", ["deletedkeys", n, "recover"]) => Self::Recover { name: name(n)? },
            ("DELETE", ["deletedkeys", n]) => Self::Purge { name: name(n)? },
            _ => return None,
        };
        Some(route)
    }

    /// The permission the operation needs.
    pub fn permission(&self) -> Permission {
        match self {
            Self::ListKeys => Permission::List,
            Self::GetKey { .. } | Self::ListVersions { .. } | Self::GetDeleted { .. } => {
                Permission::Get
            }
            Self::Create { .. } => Permission::Create,
            Self::Update { .. } => Permission::Update,
            Self::Delete { .. } => Permission::Delete,
            Self::Release { .. } => Permission::Release,
            Self::Recover { .. } => Permission::Recover,
            Self::Purge { .. } => Permission::Purge,
        }
    }

    /// The key name the route addresses.
    pub fn key_name(&self) -> Option<&str> {
        match self {
            Self::ListKeys => None,
            Self::GetKey { name, .. }
            | Self::ListVersions { name }
            | Self::Create { name }
            | Self::Update { name, .. }
            | Self::Delete { name }
            | Self::Release { name, .. }
            | Self::GetDeleted { name }
            | Self::Recover { name }
            | Self::Purge { name } => Some(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(name: &str, version: Option<&str>) -> Route {
        Route::GetKey {
            name: name.into(),
            version: version.map(Into::into),
        }
    }

    #[test]
    fn empty_segments_the_sdk_sends_mean_latest_version() {
        assert_eq!(Route::parse("GET", "/keys/k1/"), Some(get("k1", None)));
        assert_eq!(Route::parse("GET", "/keys/k1"), Some(get("k1", None)));
        assert_eq!(
            Route::parse("GET", "/keys/k1/abc"),
            Some(get("k1", Some("abc")))
        );
        assert_eq!(
            Route::parse("PATCH", "/keys/k1/"),
            Some(Route::Update {
                name: "k1".into(),
                version: None
            })
        );
        assert_eq!(
            Route::parse("POST", "/keys/k1//release"),
            Some(Route::Release {
                name: "k1".into(),
                version: None
            })
        );
        assert_eq!(
            Route::parse("POST", "/keys/k1/release"),
            Some(Route::Release {
                name: "k1".into(),
                version: None
            })
        );
        assert_eq!(
            Route::parse("POST", "/keys/k1/v1/release"),
            Some(Route::Release {
                name: "k1".into(),
                version: Some("v1".into())
            })
        );
    }

    #[test]
    fn other_operations() {
        assert_eq!(
            Route::parse("POST", "/keys/k1/create"),
            Some(Route::Create { name: "k1".into() })
        );
        assert_eq!(
            Route::parse("GET", "/keys/k1/versions"),
            Some(Route::ListVersions { name: "k1".into() })
        );
        assert_eq!(
            Route::parse("POST", "/deletedkeys/k1/recover"),
            Some(Route::Recover { name: "k1".into() })
        );
        assert_eq!(Route::parse("GET", "/keys"), Some(Route::ListKeys));
        assert_eq!(Route::parse("GET", "/keys//"), None);
        assert_eq!(Route::parse("PUT", "/keys/k1/create"), None);
        assert_eq!(Route::parse("GET", "/secrets/s1"), None);
    }
}
