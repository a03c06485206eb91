//! What the webhook injects, as values: the sidecar settings the bindings agree on, the sidecar
//! container, the reference-info volume and the application's environment. `render` prints the
//! same values; [`super::inject`] puts them into the pod.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::inject::deny;
use super::mutate::*;
use crate::crds::SidecarSpec;

/// The effective sidecar settings: defaults, overridden by the bindings; two bindings that set the
/// same field differently are refused.
pub(super) fn effective_sidecar(
    bindings: &[&MatchedBinding],
    defaults: &SidecarDefaults,
) -> Result<SidecarDefaults, Denial> {
    fn pick<T: PartialEq + Clone + std::fmt::Debug>(
        bindings: &[&MatchedBinding],
        field: &str,
        get: impl Fn(&SidecarSpec) -> Option<T>,
        default: T,
    ) -> Result<T, Denial> {
        let set: Vec<(&MatchedBinding, T)> = bindings
            .iter()
            .filter_map(|b| get(&b.sidecar).map(|v| (*b, v)))
            .collect();
        match set.first() {
            None => Ok(default),
            Some((_, first)) => {
                if set.iter().all(|(_, v)| v == first) {
                    Ok(first.clone())
                } else {
                    let detail = set
                        .iter()
                        .map(|(b, v)| format!("{} sets {v:?}", b.name))
                        .collect::<Vec<_>>()
                        .join(", ");
                    Err(deny(
                        bindings,
                        format!(
                            "the bindings disagree on sidecar {field} ({detail}); one sidecar serves them all"
                        ),
                    ))
                }
            }
        }
    }
    Ok(SidecarDefaults {
        image: pick(
            bindings,
            "image",
            |s| s.image.clone(),
            defaults.image.clone(),
        )?,
        port: pick(bindings, "port", |s| s.port, defaults.port)?,
        log_level: pick(bindings, "logLevel", |s| s.log_level, defaults.log_level)?,
        resources: pick(
            bindings,
            "resources",
            |s| s.resources.clone().map(Some),
            defaults.resources.clone(),
        )?,
    })
}

/// The sidecar container as JSON.
pub fn sidecar_container(sidecar: &SidecarDefaults) -> Value {
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": sidecar.image,
        "command": [SIDECAR_COMMAND],
        "env": [
            {"name": "SkrSideCarArgs", "value": STANDARD.encode(SKR_SIDECAR_ARGS_JSON)},
            {"name": "Port", "value": sidecar.port.to_string()},
            {"name": "LogLevel", "value": sidecar.log_level.as_str()},
        ],
        "volumeMounts": [
            {"name": REFERENCE_INFO_VOLUME, "mountPath": REFERENCE_INFO_PATH, "readOnly": true},
        ],
    });
    if let Some(r) = &sidecar.resources
        && let Ok(v) = serde_json::to_value(r)
    {
        c["resources"] = v;
    }
    c
}

/// The hostPath volume of the reference info.
pub fn reference_info_volume() -> Value {
    json!({"name": REFERENCE_INFO_VOLUME, "hostPath": {"path": REFERENCE_INFO_PATH}})
}

/// The env the app containers get, in order.
pub fn app_env(bindings: &[&MatchedBinding], port: u16) -> Vec<(String, String)> {
    let endpoint = format!("http://localhost:{port}");
    let mut env = vec![(ENV_ENDPOINT.to_string(), endpoint.clone())];
    let one = bindings.len() == 1;
    for b in bindings {
        let sfx = if one {
            String::new()
        } else {
            format!("_{}", env_suffix(&b.name))
        };
        if !one {
            env.push((format!("{ENV_ENDPOINT}{sfx}"), endpoint.clone()));
        }
        env.push((
            format!("{ENV_MAA_ENDPOINT}{sfx}"),
            host_of(&b.authority).to_string(),
        ));
        env.push((
            format!("{ENV_AKV_ENDPOINT}{sfx}"),
            host_of(&b.vault).to_string(),
        ));
        env.push((format!("{ENV_KEY_NAME}{sfx}"), b.key_name.clone()));
    }
    env
}
