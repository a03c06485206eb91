//! The Microsoft Azure Attestation double: RS256 tokens with the claim shapes of MAA's SEV-SNP
//! container tokens (Azure docs, "Confidential containers attestation concepts", sample token),
//! signing keys at `GET /certs` and OpenID metadata at `/.well-known/openid-configuration`.
//!
//! Tokens are minted on request (Rust API or `POST /_double/token`) for a requested hostdata,
//! runtime keys, debuggable flag, VMPL, compliance status and lifetime, including deliberately bad
//! ones (expired, signed by a key the authority does not publish).

use serde_json::{Value, json};

use crate::jose::{JoseError, RsaSigner, b64url};
use crate::pki::{Pki, PkiError, sha2_256};

/// Default attestation host (East US shared provider, as the AKS examples use).
pub const DEFAULT_MAA_HOST: &str = "sharedeus.eus.attest.azure.net";
/// Compliance status of AKS Kata confidential containers.
pub const AKS_COMPLIANCE_STATUS: &str = "azure-signed-katacc-uvm";

/// What a minted token should say.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TokenRequest {
    /// Attestation host; `iss` is `https://<host>`.
    pub issuer_host: String,
    /// `x-ms-sevsnpvm-hostdata`: 64 lowercase hex characters, the policy hash.
    pub hostdata: String,
    /// The runtime data: a JWKS `{"keys": [...]}` that MAA repeats under `x-ms-runtime`.
    pub runtime: Value,
    /// `x-ms-sevsnpvm-is-debuggable`.
    pub debuggable: bool,
    /// `x-ms-sevsnpvm-vmpl`.
    pub vmpl: u32,
    /// `x-ms-compliance-status`.
    pub compliance_status: String,
    /// `x-ms-attestation-type`.
    pub attestation_type: String,
    /// Seconds from `iat` to `exp` (MAA's sample token: 8 hours).
    pub lifetime_secs: i64,
    /// Make a token that expired an hour ago.
    pub expired: bool,
    /// Sign with a key the authority does not publish (same `kid`), so verification must fail.
    pub foreign_signature: bool,
    /// Extra claims merged over the generated ones.
    pub extra_claims: serde_json::Map<String, Value>,
}

impl Default for TokenRequest {
    fn default() -> Self {
        Self {
            issuer_host: DEFAULT_MAA_HOST.to_owned(),
            hostdata: "0".repeat(64),
            runtime: json!({"keys": []}),
            debuggable: false,
            vmpl: 0,
            compliance_status: AKS_COMPLIANCE_STATUS.to_owned(),
            attestation_type: "sevsnpvm".to_owned(),
            lifetime_secs: 8 * 3600,
            expired: false,
            foreign_signature: false,
            extra_claims: serde_json::Map::new(),
        }
    }
}

/// The attestation double's keys.
#[derive(Debug)]
pub struct Attestation {
    signer: RsaSigner,
    foreign: RsaSigner,
}

/// Errors minting tokens.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// Key or certificate generation failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Signing failed.
    #[error(transparent)]
    Jose(#[from] JoseError),
}

impl Attestation {
    /// New signing keys, certified by the doubles' CA.
    pub fn new(pki: &Pki) -> Result<Self, AttestationError> {
        let signer = pki.rsa_signer(DEFAULT_MAA_HOST, "ckb-doubles attestation signing")?;
        let foreign = RsaSigner::generate(signer.kid.clone())?;
        Ok(Self { signer, foreign })
    }

    /// The JWKS served at `/certs`: `kid`, `kty`, `x5c` as MAA publishes, plus `n`/`e`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.signer.public_jwk()]})
    }

    /// OpenID metadata of an attestation host.
    pub fn openid_configuration(host: &str) -> Value {
        json!({
            "issuer": format!("https://{host}"),
            "jwks_uri": format!("https://{host}/certs"),
            "response_types_supported": ["token", "none"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["x-ms-attestation-type", "x-ms-sevsnpvm-hostdata", "x-ms-runtime"],
        })
    }

    /// The claims a request yields at `now` (Unix seconds).
    pub fn claims(req: &TokenRequest, now: i64) -> Value {
        let (iat, exp) = if req.expired {
            (now - req.lifetime_secs - 3600, now - 3600)
        } else {
            (now, now + req.lifetime_secs)
        };
        // REPORT_DATA is SHA-256 of the runtime data the sidecar sent, zero-padded to 64 bytes.
        let runtime_bytes = serde_json::to_vec(&req.runtime).unwrap_or_default();
        let mut report_data = sha2_256(&runtime_bytes);
        report_data.resize(64, 0);
        let mut jti = [0u8; 32];
        aws_lc_rs::rand::fill(&mut jti).expect("system random generator");
        // Fields MAA sets from the report that nothing here depends on get fixed, plausible
        // values of the right shape (hex of the right length, small numbers).
        let mut claims = json!({
            "iss": format!("https://{}", req.issuer_host),
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": hex::encode(jti),
            "x-ms-ver": "1.0",
            "x-ms-attestation-type": req.attestation_type,
            "x-ms-compliance-status": req.compliance_status,
            "x-ms-policy-hash": b64url(&sha2_256(b"ckb-doubles default attestation policy")),
            "x-ms-runtime": req.runtime,
            "x-ms-sevsnpvm-hostdata": req.hostdata,
            "x-ms-sevsnpvm-is-debuggable": req.debuggable,
            "x-ms-sevsnpvm-vmpl": req.vmpl,
            "x-ms-sevsnpvm-reportdata": hex::encode(&report_data),
            "x-ms-sevsnpvm-launchmeasurement": "0".repeat(96),
            "x-ms-sevsnpvm-authorkeydigest": "0".repeat(96),
            "x-ms-sevsnpvm-idkeydigest": "0".repeat(96),
            "x-ms-sevsnpvm-familyId": "0".repeat(32),
            "x-ms-sevsnpvm-imageId": "0".repeat(32),
            "x-ms-sevsnpvm-reportid": "0".repeat(64),
            "x-ms-sevsnpvm-guestsvn": 1,
            "x-ms-sevsnpvm-bootloader-svn": 3,
            "x-ms-sevsnpvm-microcode-svn": 115,
            "x-ms-sevsnpvm-snpfw-svn": 8,
            "x-ms-sevsnpvm-tee-svn": 0,
            "x-ms-sevsnpvm-migration-allowed": false,
            "x-ms-sevsnpvm-smt-allowed": true,
            "x-ms-sevsnpvm-uvm-endorsement": {
                "x-ms-sevsnpvm-guestsvn": "100",
                "x-ms-sevsnpvm-launchmeasurement": "0".repeat(96),
            },
        });
        for (k, v) in &req.extra_claims {
            claims[k] = v.clone();
        }
        claims
    }

    /// Mints a token at `now`.
    pub fn mint(&self, req: &TokenRequest, now: i64) -> Result<String, AttestationError> {
        let claims = Self::claims(req, now);
        let signer = if req.foreign_signature {
            &self.foreign
        } else {
            &self.signer
        };
        let header = json!({
            "jku": format!("https://{}/certs", req.issuer_host),
            "kid": self.signer.kid,
            "typ": "JWT",
        });
        Ok(signer.sign_compact(header, claims.to_string().as_bytes())?)
    }
}

/// Size of an AMD SEV-SNP attestation report (SEV-SNP ABI specification, `ATTESTATION_REPORT`).
pub const SNP_REPORT_LEN: usize = 0x4A0;

/// Fields of an SEV-SNP report the claims come from (offsets from the SEV-SNP ABI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpReport {
    /// POLICY (0x08, 8 bytes little-endian); bit 19 allows debugging.
    pub policy: u64,
    /// VMPL (0x30, 4 bytes little-endian).
    pub vmpl: u32,
    /// REPORT_DATA (0x50, 64 bytes).
    pub report_data: Vec<u8>,
    /// MEASUREMENT (0x90, 48 bytes).
    pub measurement: Vec<u8>,
    /// HOST_DATA (0xC0, 32 bytes).
    pub host_data: Vec<u8>,
}

impl SnpReport {
    /// Parses a raw report.
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        if raw.len() != SNP_REPORT_LEN {
            return Err(format!(
                "an SEV-SNP report has {SNP_REPORT_LEN} bytes, this one {}",
                raw.len()
            ));
        }
        let mut policy = [0u8; 8];
        policy.copy_from_slice(&raw[0x08..0x10]);
        let mut vmpl = [0u8; 4];
        vmpl.copy_from_slice(&raw[0x30..0x34]);
        Ok(Self {
            policy: u64::from_le_bytes(policy),
            vmpl: u32::from_le_bytes(vmpl),
            report_data: raw[0x50..0x90].to_vec(),
            measurement: raw[0x90..0xC0].to_vec(),
            host_data: raw[0xC0..0xE0].to_vec(),
        })
    }

    /// Writes the fields into a zeroed report (for tests and demos that play the hardware).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut raw = vec![0u8; SNP_REPORT_LEN];
        raw[0x08..0x10].copy_from_slice(&self.policy.to_le_bytes());
        raw[0x30..0x34].copy_from_slice(&self.vmpl.to_le_bytes());
        copy_padded(&mut raw[0x50..0x90], &self.report_data);
        copy_padded(&mut raw[0x90..0xC0], &self.measurement);
        copy_padded(&mut raw[0xC0..0xE0], &self.host_data);
        raw
    }

    /// Whether POLICY allows debugging (bit 19).
    pub fn debuggable(&self) -> bool {
        self.policy & (1 << 19) != 0
    }
}

fn copy_padded(dst: &mut [u8], src: &[u8]) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
}

/// Turns the body of `POST /attest/SevSnpVm` (as the SKR sidecar sends it) into the token it
/// earns: `report` = base64url(JSON `{"SnpReport": base64url(raw report), ...}`),
/// `runtimeData` = `{"data": base64url(JWKS JSON), "dataType": "JSON"}`.
///
/// NB: the double does not verify the report's AMD signature (VCEK chain) nor the UVM
/// endorsement; it trusts the report's fields, checks that REPORT_DATA binds the runtime data,
/// and reports the AKS compliance status.
pub fn token_request_for_attest(body: &Value, host: &str) -> Result<TokenRequest, String> {
    use crate::jose::b64url_decode;
    let report = body
        .get("report")
        .and_then(Value::as_str)
        .and_then(b64url_decode)
        .ok_or("report must be base64url")?;
    let report: Value =
        serde_json::from_slice(&report).map_err(|e| format!("report is not JSON: {e}"))?;
    let raw = report
        .get("SnpReport")
        .and_then(Value::as_str)
        .and_then(b64url_decode)
        .ok_or("report.SnpReport must be base64url")?;
    let snp = SnpReport::parse(&raw)?;
    let data = body
        .pointer("/runtimeData/data")
        .and_then(Value::as_str)
        .and_then(b64url_decode)
        .ok_or("runtimeData.data must be base64url")?;
    match body
        .pointer("/runtimeData/dataType")
        .and_then(Value::as_str)
    {
        Some("JSON") => {}
        other => {
            return Err(format!(
                "runtimeData.dataType must be \"JSON\", not {other:?}"
            ));
        }
    }
    let runtime: Value =
        serde_json::from_slice(&data).map_err(|e| format!("runtimeData is not JSON: {e}"))?;
    if snp.report_data[..32] != sha2_256(&data)[..] {
        return Err("REPORT_DATA does not hold the SHA-256 of the runtime data".into());
    }
    let mut extra = serde_json::Map::new();
    extra.insert(
        "x-ms-sevsnpvm-reportdata".into(),
        hex::encode(&snp.report_data).into(),
    );
    extra.insert(
        "x-ms-sevsnpvm-launchmeasurement".into(),
        hex::encode(&snp.measurement).into(),
    );
    Ok(TokenRequest {
        issuer_host: host.to_owned(),
        hostdata: hex::encode(&snp.host_data),
        runtime,
        debuggable: snp.debuggable(),
        vmpl: snp.vmpl,
        extra_claims: extra,
        ..TokenRequest::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_fields_are_read_at_the_abi_offsets() {
        let mut raw = vec![0u8; SNP_REPORT_LEN];
        raw[0x08 + 2] = 0x08; // POLICY bit 19 (DEBUG)
        raw[0x30] = 2; // VMPL
        raw[0x50] = 0x11; // REPORT_DATA[0]
        raw[0x90 + 47] = 0x22; // MEASUREMENT[47]
        raw[0xC0] = 0x33; // HOST_DATA[0]
        raw[0xC0 + 31] = 0x44; // HOST_DATA[31]
        raw[0xE0] = 0xff; // just past HOST_DATA
        let r = SnpReport::parse(&raw).unwrap();
        assert!(r.debuggable());
        assert_eq!(r.vmpl, 2);
        assert_eq!(r.report_data[0], 0x11);
        assert_eq!(r.measurement[47], 0x22);
        assert_eq!(r.host_data.len(), 32);
        assert_eq!((r.host_data[0], r.host_data[31]), (0x33, 0x44));
        assert!(SnpReport::parse(&raw[1..]).is_err());
        let mut again = r.to_bytes();
        again[0xE0] = 0xff;
        assert_eq!(again, raw);
    }

    #[test]
    fn claims_have_the_types_of_maa_tokens() {
        let req = TokenRequest {
            hostdata: "ab".repeat(32),
            runtime: serde_json::json!({"keys": [{"kty": "RSA"}]}),
            ..TokenRequest::default()
        };
        let c = Attestation::claims(&req, 1_000_000);
        assert_eq!(c["iss"], format!("https://{DEFAULT_MAA_HOST}"));
        assert_eq!(c["x-ms-sevsnpvm-is-debuggable"], false);
        assert_eq!(c["x-ms-sevsnpvm-vmpl"], 0);
        assert_eq!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
            8 * 3600
        );
        assert_eq!(c["x-ms-sevsnpvm-reportdata"].as_str().unwrap().len(), 128);
        assert!(
            c["x-ms-sevsnpvm-reportdata"]
                .as_str()
                .unwrap()
                .ends_with(&"0".repeat(64))
        );
        assert_eq!(c["x-ms-runtime"], req.runtime);
        let expired = Attestation::claims(
            &TokenRequest {
                expired: true,
                ..req
            },
            1_000_000,
        );
        assert!(expired["exp"].as_i64().unwrap() < 1_000_000);
    }
}
