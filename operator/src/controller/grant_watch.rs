//! The grants' watch, and which bindings a change of grants concerns.
//!
//! The `ConfidentialKeyGrant` CRD is optional: a cluster that uses only the operator's flags
//! (simple mode) may never install it. A watch of a resource the API server does not serve fails
//! with 404 on every attempt, and a reflector that never lists never becomes ready, so the
//! caches, the readiness probe and the controller's first pass would wait for ever.
//! [`tolerate_missing_crd`] turns that 404 into an empty listing ("no grants"): bindings without
//! `grantRef` are bounded by the flags, bindings naming a grant report `GrantNotFound`. The watch
//! keeps retrying with its backoff, so a CRD installed later is picked up; each change between
//! "not installed" and "installed" is logged once.

use std::sync::Arc;

use ckb_crds::ConfidentialKeyBinding;
use ckb_crds::grant::ConfidentialKeyGrant;
use futures::{Stream, StreamExt, stream};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use tracing::{debug, info};

/// Whether a watch error says the API server does not serve the resource (CRD not installed).
pub fn crd_missing(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => return status.code == 404,
        watcher::Error::NoResourceVersion => return false,
    };
    matches!(api, kube::Error::Api(status) if status.code == 404)
}

/// Passes the grants' watch through, except that a 404 (the CRD is not installed) becomes an
/// empty listing, once per absence (see the module docs). Other errors pass unchanged.
pub fn tolerate_missing_crd<S>(
    watch: S,
) -> impl Stream<Item = Result<Event<ConfidentialKeyGrant>, watcher::Error>> + Send
where
    S: Stream<Item = Result<Event<ConfidentialKeyGrant>, watcher::Error>> + Send,
{
    let mut absent = false;
    watch.flat_map(move |item| {
        let out = match item {
            Err(e) if crd_missing(&e) => {
                if absent {
                    debug!(error = %e, "ConfidentialKeyGrant CRD still not installed");
                    vec![]
                } else {
                    absent = true;
                    info!(
                        "the ConfidentialKeyGrant CRD is not installed: no grants; bindings \
                         without spec.grantRef are bounded by the operator's flags (simple \
                         mode), bindings naming a grant report GrantNotFound"
                    );
                    vec![Ok(Event::Init), Ok(Event::InitDone)]
                }
            }
            Ok(Event::Init) if absent => {
                absent = false;
                info!("the ConfidentialKeyGrant CRD is installed: grants apply");
                vec![Ok(Event::Init)]
            }
            other => vec![other],
        };
        stream::iter(out)
    })
}

/// The bindings to plan again after a grant event: those naming a grant that was applied or
/// deleted, and after a (re)listing every binding that names a grant (a grant deleted while the
/// watch was down, or the CRD found missing, appears in no other event).
pub fn bindings_to_replan(
    event: &Event<ConfidentialKeyGrant>,
    bindings: &[Arc<ConfidentialKeyBinding>],
) -> Vec<ObjectRef<ConfidentialKeyBinding>> {
    let names: Option<Vec<&str>> = match event {
        Event::Apply(g) | Event::Delete(g) => {
            Some(g.metadata.name.as_deref().into_iter().collect())
        }
        Event::InitDone => None,
        Event::Init | Event::InitApply(_) => return Vec::new(),
    };
    bindings
        .iter()
        .filter(|b| {
            b.spec
                .grant_ref
                .as_ref()
                .is_some_and(|r| names.as_ref().is_none_or(|n| n.contains(&r.name.as_str())))
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}
