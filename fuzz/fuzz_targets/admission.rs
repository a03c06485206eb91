//! Fuzzes the admission path minus transport: body parser, binding selection, decision, answer.
//! Any panic is a bug; the answer must always be a JSON AdmissionReview.

#![no_main]

use std::sync::OnceLock;

use ckb_operator::webhook::mutate::SidecarDefaults;
use ckb_operator::webhook::review;
use ckb_operator::webhook::sources::{self, MapSources};
use libfuzzer_sys::fuzz_target;

const BINDINGS: &str = include_str!("../../operator/tests/data/admission/bindings.yaml");
const POLICY: &str = include_str!("../../operator/tests/data/admission/orders-policy.rego");

fn sources() -> &'static MapSources {
    static S: OnceLock<MapSources> = OnceLock::new();
    S.get_or_init(|| {
        let mut s =
            MapSources::default().with_policy("payments", "orders-policy", "policy.rego", POLICY);
        for b in serde_saphyr::from_multiple(BINDINGS).expect("bindings parse") {
            s = s.with_binding(b);
        }
        s
    })
}

fuzz_target!(|data: &[u8]| {
    let classes = vec!["kata-cc-isolation".to_string()];
    // MapSources answers at once: polled in place, no runtime.
    let answer = futures::executor::block_on(review::handle(data, async |req| {
        sources::admit(sources(), &SidecarDefaults::default(), &classes, req).await
    }));
    let v: serde_json::Value = serde_json::from_slice(&answer.body.to_vec()).expect("answer is JSON");
    assert!(v["response"]["allowed"].is_boolean());
});
