//! `ckb-operator release-policy`: the release policy a binding would set on its key.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

use super::hash::{input_name, read_input};
use crate::crds::ConfidentialKeyBinding;
use crate::policy::hash::{PolicyHash, hash_rego};
use crate::policy::release::ReleasePolicy;

/// Arguments of `ckb-operator release-policy`.
#[derive(Debug, clap::Args)]
pub struct ReleasePolicyArgs {
    /// Binding manifest (YAML or JSON, one ConfidentialKeyBinding; other kinds in the file are
    /// skipped), or `-` for standard input.
    #[arg(short = 'f', long = "file", env = "CKB_RELEASE_POLICY_FILE")]
    pub file: String,
    /// A policy hash (64 lowercase hex) the key may be released to; repeat for several. The
    /// binding's `spec.policy.additionalHashes` are always added.
    #[arg(
        long = "hash",
        value_name = "HASH",
        env = "CKB_RELEASE_POLICY_HASH",
        value_delimiter = ','
    )]
    pub hashes: Vec<String>,
    /// Agent policy file (Rego text) whose hash the key may be released to, instead of or besides
    /// `--hash` (the binding's ConfigMap is not read).
    #[arg(long, value_name = "FILE", env = "CKB_RELEASE_POLICY_POLICY")]
    pub policy: Option<String>,
    /// Print the release policy's `data` as Key Vault stores it (base64url without padding)
    /// instead of the JSON.
    #[arg(long, env = "CKB_RELEASE_POLICY_ENCODED")]
    pub encoded: bool,
}

/// Reads the one ConfidentialKeyBinding of a YAML (or JSON) manifest.
pub fn binding_from_manifest(text: &str, name: &str) -> anyhow::Result<ConfidentialKeyBinding> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).with_context(|| format!("{name} is not YAML"))?;
    let mut bindings: Vec<serde_json::Value> = docs
        .into_iter()
        .filter(|d| d.get("kind").and_then(|k| k.as_str()) == Some("ConfidentialKeyBinding"))
        .collect();
    match bindings.len() {
        0 => bail!("{name} has no ConfidentialKeyBinding (kind: ConfidentialKeyBinding)"),
        1 => {}
        n => bail!("{name} has {n} ConfidentialKeyBindings: pass a file with exactly one"),
    }
    let doc = bindings.remove(0);
    let api_version = doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
    let expected = format!("{}/{}", crate::crds::GROUP, crate::crds::VERSION);
    if api_version != expected {
        bail!("{name}: apiVersion is {api_version:?}, expected {expected:?}");
    }
    serde_json::from_value(doc)
        .with_context(|| format!("{name} is not a valid ConfidentialKeyBinding"))
}

/// The release policy for the arguments (pure apart from reading the named files).
pub fn release_policy(args: &ReleasePolicyArgs) -> anyhow::Result<ReleasePolicy> {
    let name = input_name(&args.file);
    let bytes = read_input(&args.file)?;
    let text = String::from_utf8(bytes).with_context(|| format!("{name} is not UTF-8 text"))?;
    let binding = binding_from_manifest(&text, &name)?;

    let mut hashes = BTreeSet::new();
    for h in &args.hashes {
        hashes.insert(
            h.parse::<PolicyHash>()
                .with_context(|| format!("--hash {h:?}"))?,
        );
    }
    if let Some(policy) = &args.policy {
        let rego = read_input(policy)?;
        if rego.is_empty() {
            bail!(
                "--policy {}: the file is empty: there is no policy to hash",
                input_name(policy)
            );
        }
        hashes.insert(hash_rego(&rego));
    }
    if hashes.is_empty() {
        bail!(
            "no policy hash to bind: pass --hash <64 hex digits> or --policy <Rego file> (the binding's ConfigMap is not read)"
        );
    }
    // Parsed with the binding: a value that is not a hash never gets here.
    hashes.extend(binding.spec.policy.additional_hashes.iter().cloned());
    ReleasePolicy::for_binding(&binding.spec, &hashes)
        .with_context(|| format!("{name}: cannot build a release policy"))
}

/// Runs the subcommand.
pub fn run(args: ReleasePolicyArgs) -> anyhow::Result<()> {
    let policy = release_policy(&args)?;
    if args.encoded {
        println!("{}", policy.encoded());
    } else {
        println!("{}", policy.to_json());
    }
    Ok(())
}
