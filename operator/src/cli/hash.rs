//! `ckb-operator hash`: the hostdata value of an agent policy.

use std::io::Read;

use anyhow::{Context, bail};

use crate::policy::hash::hash_rego;
use crate::webhook::policy::annotation_policy_hash;

/// Arguments of `ckb-operator hash`.
#[derive(Debug, clap::Args)]
pub struct HashArgs {
    /// Policy file (Rego text, hashed byte for byte), or `-` for standard input.
    #[arg(default_value = "-", env = "CKB_HASH_FILE")]
    pub file: String,
    /// The input is the value of the `io.katacontainers.config.agent.policy` annotation (standard
    /// base64 with padding, as genpolicy writes it), not the Rego text. Surrounding whitespace,
    /// such as a final newline, and line breaks (wrapped base64) are ignored, as by the webhook.
    #[arg(long, env = "CKB_HASH_ANNOTATION")]
    pub annotation: bool,
}

/// Reads a file, or standard input for `-`; the error names the input.
pub(crate) fn read_input(file: &str) -> anyhow::Result<Vec<u8>> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {file}"))
    }
}

/// A human name for an input: the path, or "standard input".
pub(crate) fn input_name(file: &str) -> String {
    if file == "-" {
        "standard input".to_owned()
    } else {
        file.to_owned()
    }
}

/// The 64-hex hash of the input, as the subcommand prints it.
pub fn hash_of(input: &[u8], annotation: bool, name: &str) -> anyhow::Result<String> {
    if annotation {
        let text = std::str::from_utf8(input)
            .with_context(|| format!("{name}: an annotation value must be base64 text"))?;
        let hash = annotation_policy_hash(text.trim()).with_context(|| name.to_owned())?;
        Ok(hash.to_string())
    } else {
        if input.is_empty() {
            bail!("{name} is empty: there is no policy to hash");
        }
        Ok(hash_rego(input).to_string())
    }
}

/// Runs the subcommand.
pub fn run(args: HashArgs) -> anyhow::Result<()> {
    let input = read_input(&args.file)?;
    println!(
        "{}",
        hash_of(&input, args.annotation, &input_name(&args.file))?
    );
    Ok(())
}
