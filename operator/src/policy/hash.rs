//! The agent policy hash: what SEV-SNP `HOST_DATA` holds and MAA reports as `x-ms-sevsnpvm-hostdata`.
//!
//! The Kata shim on AKS decodes the `io.katacontainers.config.agent.policy` annotation (standard
//! base64 with padding, as genpolicy writes it) and measures the SHA-256 of the **decoded Rego
//! bytes**. Hashing the base64 text instead is the classic mistake: it yields a valid-looking value
//! that no attestation token will ever carry, so the key is never released.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

// The type lives with the API (spec and status fields hold it); re-exported here, beside the
// functions that compute it.
pub use ckb_crds::{HASH_HEX_LEN, InvalidPolicyHash, PolicyHash};

/// Errors of the policy hash: bad annotation values and malformed hash strings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// The annotation value is empty: there is no policy to hash.
    #[error("the agent policy annotation value is empty: there is no policy to hash")]
    EmptyAnnotation,
    /// The annotation value is not standard base64 with padding.
    #[error(
        "the agent policy annotation value is not standard base64 with padding (as genpolicy writes it): {0}"
    )]
    InvalidBase64(#[source] base64::DecodeError),
    /// A hash string is not 64 lowercase hex digits.
    #[error(transparent)]
    InvalidHash(#[from] InvalidPolicyHash),
}

/// The hash of a policy given as Rego text (the decoded bytes).
pub fn hash_rego(rego: &[u8]) -> PolicyHash {
    PolicyHash::from_digest(Sha256::digest(rego).into())
}

/// The hash of a policy given as the annotation value (standard base64 with padding).
///
/// The value must be exactly what the pod carries: no surrounding whitespace, no line breaks.
pub fn hash_annotation(value: &str) -> Result<PolicyHash, HashError> {
    Ok(hash_rego(&decode_annotation(value)?))
}

/// The annotation value for a Rego text: standard base64 with padding, no line breaks.
pub fn encode_annotation(rego: &str) -> String {
    STANDARD.encode(rego.as_bytes())
}

/// The Rego bytes of an annotation value (standard base64 with padding).
pub fn decode_annotation(value: &str) -> Result<Vec<u8>, HashError> {
    if value.is_empty() {
        return Err(HashError::EmptyAnnotation);
    }
    STANDARD.decode(value).map_err(HashError::InvalidBase64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example of the design notes: upstream Kata's allow-all.rego is not vendored here,
    // so these vectors pin well-known SHA-256 values instead; the sha256sum comparisons over many
    // inputs live in tests/policy_hash.rs.
    #[test]
    fn hash_of_known_inputs() {
        assert_eq!(
            hash_rego(b"").as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hash_rego(b"abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn annotation_hash_is_of_decoded_bytes_not_of_base64_text() {
        let rego = "package agent_policy\n\ndefault CreateContainerRequest := true\n";
        let annotation = encode_annotation(rego);
        assert_eq!(
            hash_annotation(&annotation).unwrap(),
            hash_rego(rego.as_bytes())
        );
        assert_ne!(
            hash_annotation(&annotation).unwrap(),
            hash_rego(annotation.as_bytes())
        );
    }

    #[test]
    fn annotation_errors_say_which() {
        assert_eq!(hash_annotation(""), Err(HashError::EmptyAnnotation));
        let e = hash_annotation("not base64!").unwrap_err();
        assert!(matches!(e, HashError::InvalidBase64(_)), "{e:?}");
        assert!(e.to_string().contains("not standard base64"), "{e}");
        // Unpadded and URL-safe values are not what genpolicy writes: refused, not guessed at.
        assert_eq!(hash_annotation("YWJj"), Ok(hash_rego(b"abc")));
        assert!(matches!(
            hash_annotation("YWI"),
            Err(HashError::InvalidBase64(_))
        ));
        assert!(matches!(
            hash_annotation("-_-_"),
            Err(HashError::InvalidBase64(_))
        ));
        assert!(matches!(
            hash_annotation("YWJj\n"),
            Err(HashError::InvalidBase64(_))
        ));
    }

    #[test]
    fn policy_hash_parsing_validates() {
        let good = "0bb24b3ac02a72f8f7a11cbeab9831d802393860479ef283d8e480d10dee6a19";
        let h: PolicyHash = good.parse().unwrap();
        assert_eq!(h.as_str(), good);
        assert_eq!(h.to_string(), good);
        assert_eq!(h.short(12), "0bb24b3ac02a");
        for bad in [
            "",
            &good[..63],
            &format!("{good}0"),
            &good.to_uppercase(),
            &good.replace('b', "g"),
            &format!(" {}", &good[1..]),
        ] {
            let e = HashError::from(bad.parse::<PolicyHash>().unwrap_err());
            assert!(matches!(e, HashError::InvalidHash { .. }), "{bad:?}");
        }
    }

    #[test]
    fn policy_hash_serde_is_a_validated_string() {
        let good = "0bb24b3ac02a72f8f7a11cbeab9831d802393860479ef283d8e480d10dee6a19";
        let h: PolicyHash = serde_json::from_str(&format!("\"{good}\"")).unwrap();
        assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{good}\""));
        assert!(serde_json::from_str::<PolicyHash>("\"abc\"").is_err());
        assert!(serde_json::from_str::<PolicyHash>("12").is_err());
    }

    /// Runs a shell pipeline of coreutils on `input` and returns its stdout.
    fn coreutils(script: &str, input: &[u8]) -> String {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh, base64 and sha256sum (coreutils) are needed by this test");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        // Write from a thread: a 150 KiB input would fill the pipe while we wait for stdout.
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{script} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    fn inputs() -> Vec<(&'static str, Vec<u8>)> {
        let rules = "package agent_policy\n\ndefault CreateContainerRequest := false\n";
        let mut big = String::new();
        let mut i = 0;
        while big.len() < 150 * 1024 {
            big.push_str(&format!("allow_env_{i} {{ input.env[_] == \"K{i}=v\" }}\n"));
            i += 1;
        }
        vec![
            ("LF with trailing newline", rules.as_bytes().to_vec()),
            ("no trailing newline", rules.trim_end().as_bytes().to_vec()),
            ("CRLF", rules.replace('\n', "\r\n").into_bytes()),
            (
                "UTF-8",
                "package p\n# Größe, 日本語, emoji 🔐\nx := \"ü\"\n"
                    .as_bytes()
                    .to_vec(),
            ),
            ("one byte", b"x".to_vec()),
            ("150 KiB", big.into_bytes()),
        ]
    }

    #[test]
    fn matches_sha256sum_of_decoded_bytes() {
        for (name, rego) in inputs() {
            let annotation = encode_annotation(std::str::from_utf8(&rego).unwrap());
            // Our encoding is what `base64 -w0` writes (genpolicy's form: padded, one line).
            assert_eq!(annotation, coreutils("base64 -w0", &rego), "{name}");
            // The hash is sha256sum of what `base64 -d` decodes, the documented manual workflow.
            let expected = coreutils(
                "base64 -d | sha256sum | cut -d' ' -f1",
                annotation.as_bytes(),
            );
            let expected = expected.trim();
            assert_eq!(
                hash_annotation(&annotation).unwrap().as_str(),
                expected,
                "{name}"
            );
            assert_eq!(hash_rego(&rego).as_str(), expected, "{name}");
            // And never the hash of the base64 text.
            let of_text = coreutils("sha256sum | cut -d' ' -f1", annotation.as_bytes());
            assert_ne!(
                hash_annotation(&annotation).unwrap().as_str(),
                of_text.trim(),
                "{name}"
            );
        }
    }
}
