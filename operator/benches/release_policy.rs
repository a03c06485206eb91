//! Benchmarks of the release-policy core: building a binding's policy for 1 to 100 allowed hashes,
//! serializing and encoding it, parsing it back from Key Vault's `data`, and comparing by meaning
//! (what the controller does on every reconcile of a key).
//!
//! Run: `cargo bench -p ckb-operator --bench release_policy`

// NB: `criterion_group!` generates a public function without documentation.
#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::hint::black_box;

use ckb_operator::crds::ConfidentialKeyBindingSpec;
use ckb_operator::policy::hash::{PolicyHash, hash_annotation, hash_rego};
use ckb_operator::policy::release::ReleasePolicy;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn spec() -> ConfidentialKeyBindingSpec {
    serde_json::from_value(serde_json::json!({
        "podSelector": {"matchLabels": {"app": "orders"}},
        "key": {"vault": "https://contoso.vault.azure.net", "name": "orders-key"},
        "attestation": {
            "authority": "https://sharedeus.eus.attest.azure.net",
            "extraClaims": [{"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}]
        },
        "policy": {"configMapRef": {"name": "orders-policy"}}
    }))
    .unwrap()
}

fn hashes(n: usize) -> BTreeSet<PolicyHash> {
    (0..n)
        .map(|i| hash_rego(format!("policy {i}").as_bytes()))
        .collect()
}

fn release_policy(c: &mut Criterion) {
    let spec = spec();
    let mut g = c.benchmark_group("release_policy");
    for n in [1usize, 10, 100] {
        let hs = hashes(n);
        let built = ReleasePolicy::for_binding(&spec, &hs).unwrap();
        let data = built.encoded();
        let json = built.to_json();
        let mut shuffled = built.clone();
        shuffled.any_of.reverse();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("for_binding", n), &hs, |b, hs| {
            b.iter(|| ReleasePolicy::for_binding(black_box(&spec), black_box(hs)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("encoded", n), &built, |b, p| {
            b.iter(|| black_box(p).encoded())
        });
        g.bench_with_input(BenchmarkId::new("parse_json", n), &json, |b, j| {
            b.iter(|| ReleasePolicy::parse_json(black_box(j)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("decode_data", n), &data, |b, d| {
            b.iter(|| ReleasePolicy::decode_data(black_box(d)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("same_meaning", n), &shuffled, |b, s| {
            b.iter(|| assert!(built.same_meaning(black_box(s))))
        });
        // One reconcile's worth: build, read back what the key carries, compare.
        g.bench_with_input(BenchmarkId::new("reconcile_compare", n), &hs, |b, hs| {
            b.iter(|| {
                let want = ReleasePolicy::for_binding(&spec, hs).unwrap();
                let have = ReleasePolicy::decode_data(black_box(&data)).unwrap();
                assert!(want.same_meaning(&have));
            })
        });
    }
    g.finish();
}

fn policy_hash(c: &mut Criterion) {
    // A 120 KiB agent policy, the size genpolicy produces for a pod of a few containers.
    let mut rego = String::new();
    while rego.len() < 120 * 1024 {
        rego.push_str("allow_env { input.env[_] == \"KEY=value\" }\n");
    }
    let annotation = ckb_operator::policy::hash::encode_annotation(&rego);
    let mut g = c.benchmark_group("policy_hash");
    g.throughput(Throughput::Bytes(rego.len() as u64));
    g.bench_function("hash_annotation_120KiB", |b| {
        b.iter(|| hash_annotation(black_box(&annotation)).unwrap())
    });
    g.bench_function("hash_rego_120KiB", |b| {
        b.iter(|| hash_rego(black_box(rego.as_bytes())))
    });
    g.finish();
}

criterion_group!(benches, release_policy, policy_hash);
criterion_main!(benches);
