//! Pod Security Admission and the injected sidecar.
//!
//! The sidecar mounts a `hostPath` volume (the confidential VM's attestation reference info),
//! which Pod Security Admission refuses at the `baseline` and `restricted` levels. PSA runs after
//! the mutating webhooks, so a pod of such a namespace would be injected and then refused with
//! PSA's own message, which does not say why the volume is there or what to do.
//!
//! The chart therefore registers a second webhook, `psa.ckb.dev`, at [`PATH`], whose
//! `namespaceSelector` matches only the opted-in namespaces that enforce `baseline` or
//! `restricted` (the API server does the label matching, so the operator needs no access to
//! namespaces), and excludes those namespaces from the injecting webhook. Its answer is the
//! injecting webhook's decision, except that a pod the webhook would inject is refused with a
//! message saying why and how to fix it ([`refuse_injection`]).

use super::mutate::Decision;

/// The path of the webhook for namespaces whose Pod Security level refuses the sidecar.
pub const PATH: &str = "/mutate-psa-refused";

/// The namespace label holding the enforced Pod Security level.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// The levels that refuse `hostPath` volumes.
pub const REFUSING_LEVELS: [&str; 2] = ["baseline", "restricted"];

/// The decision for a pod of a namespace enforcing a refusing level: a pod that would be injected
/// is denied with the reason and the fix; anything else is answered as the injecting webhook
/// would (a pod we do not touch passes, a conflict is denied with its own message).
pub fn refuse_injection(decision: Decision, namespace: &str) -> Decision {
    match decision {
        Decision::Patch { .. } => Decision::Deny {
            message: format!(
                "ckb-operator: namespace {namespace} enforces Pod Security level {levels} \
                 ({ENFORCE_LABEL}), which refuses the hostPath volume the SKR sidecar needs (the \
                 confidential VM's attestation reference info), so this pod could not start with \
                 its key. Let the namespace run confidential pods: kubectl label namespace \
                 {namespace} {ENFORCE_LABEL}=privileged --overwrite",
                levels = REFUSING_LEVELS.join(" or ")
            ),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pod_that_would_be_injected_is_refused_and_the_message_says_the_fix() {
        let patched = Decision::Patch {
            patch: json_patch::Patch(vec![]).into(),
            warnings: vec![],
        };
        match refuse_injection(patched, "payments") {
            Decision::Deny { message } => {
                assert!(message.contains("namespace payments"), "{message}");
                assert!(message.contains("hostPath"), "{message}");
                assert!(
                    message.contains(&format!("{ENFORCE_LABEL}=privileged")),
                    "{message}"
                );
            }
            other => panic!("not refused: {other:?}"),
        }
        let allowed = Decision::Allow { warnings: vec![] };
        assert!(matches!(
            refuse_injection(allowed, "payments"),
            Decision::Allow { .. }
        ));
        let denied = Decision::Deny {
            message: "conflict".into(),
        };
        assert!(
            matches!(refuse_injection(denied, "payments"), Decision::Deny { message } if message == "conflict")
        );
    }
}
