//! The pure admission decision for a realistic pod: 2 app containers, a 120 KiB policy.
//! Run: `cargo bench -p ckb-operator --bench webhook_decide`.

use std::sync::Arc;

use ckb_operator::webhook::mutate::{MatchedBinding, PreparedPolicy, SidecarDefaults, decide};
use ckb_operator::webhook::review;
use criterion::{Criterion, criterion_main};
use serde_json::Value;

const REVIEW: &str = include_str!("../tests/data/admission/pod-create-confidential.json");

fn policy() -> String {
    // ≈120 KiB of Rego-like text (genpolicy output for 1-3 containers is 90-150 KiB).
    let mut s = String::from("package agent_policy\n\n");
    let mut i = 0;
    while s.len() < 120 * 1024 {
        s.push_str(&format!(
            "    {{\"name\": \"rule_{i}\", \"allowed\": [\"/bin/sh\", \"-c\"], \"layer\": \"{i:064x}\"}},\n"
        ));
        i += 1;
    }
    s
}

fn binding(rego: &str) -> MatchedBinding {
    MatchedBinding {
        name: "orders-key".into(),
        vault: "https://contoso.vault.azure.net".into(),
        key_name: "orders-key".into(),
        authority: "https://sharedeus.eus.attest.azure.net".into(),
        sidecar: Default::default(),
        policy: Some(Arc::new(PreparedPolicy::new(rego))),
        policy_ref: "ConfigMap orders-policy key policy.rego".into(),
        pinned: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let review_json: Value = serde_json::from_str(REVIEW).unwrap();
    let pod = review_json["request"]["object"].clone();
    let rego = policy();
    let bindings = [binding(&rego)];
    let defaults = SidecarDefaults::default();
    let classes = vec!["kata-cc-isolation".to_string()];
    c.bench_function("decide/2-containers-120KiB-policy", |b| {
        b.iter(|| decide(&pod, &bindings, &defaults, &classes))
    });
    c.bench_function("parse+decide+answer/2-containers-120KiB-policy", |b| {
        b.iter(|| {
            // The decision is ready at once: polled in place, no runtime.
            futures::executor::block_on(review::handle(REVIEW.as_bytes(), async |req| {
                decide(&req.object, &bindings, &defaults, &classes)
            }))
        })
    });
}

// NB: criterion's macro generates an undocumented pub fn.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
