//! Test doubles (Key Vault, Attestation) and the local control-plane harness for end-to-end tests.
