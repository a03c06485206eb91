//! `ckb-doubles`: runs the Key Vault and Attestation doubles on loopback (being built).

fn main() {}
