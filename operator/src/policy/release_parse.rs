//! Parsing release policies read back from Key Vault (see the grammar in [`super::release`]):
//! both the current grammar and the older `condition`/`value` form, refusing what is not
//! understood.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;

use super::release::{
    AuthorityRule, ClaimEquals, ClaimValue, Conditions, ReleasePolicy, ReleasePolicyError,
};

/// base64url that accepts padding or none (Key Vault writes none; other tools pad).
const URL_SAFE_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl ReleasePolicy {
    /// Parses a key's release policy `data` (base64url, padded or not; standard base64 is also
    /// accepted since some tools write it).
    pub fn decode_data(data: &str) -> Result<ReleasePolicy, ReleasePolicyError> {
        let data = data.trim();
        let bytes = if data.contains(['+', '/']) {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(data.trim_end_matches('='))
                .map_err(ReleasePolicyError::Base64)?
        } else {
            URL_SAFE_ANY_PAD
                .decode(data)
                .map_err(ReleasePolicyError::Base64)?
        };
        let text = String::from_utf8(bytes).map_err(|_| ReleasePolicyError::NotUtf8)?;
        ReleasePolicy::parse_json(&text)
    }

    /// Parses policy JSON in the current grammar or the older `condition`/`value` form.
    ///
    /// Refuses what it does not understand (unknown members, operators other than `equals`, nested
    /// rules, object or array values) rather than guessing. It does not check the invariants of
    /// policies the operator writes: a policy read back may legitimately lack them (call
    /// [`Self::validate`] for that).
    pub fn parse_json(json: &str) -> Result<ReleasePolicy, ReleasePolicyError> {
        let value: Value = serde_json::from_str(json).map_err(ReleasePolicyError::Json)?;
        ReleasePolicy::from_value(&value)
    }

    /// Parses an already-decoded JSON value (see [`Self::parse_json`]).
    pub fn from_value(value: &Value) -> Result<ReleasePolicy, ReleasePolicyError> {
        let top = as_object(value, "(top level)")?;
        let mut version = None;
        let mut any_of = None;
        for (k, v) in top {
            match k.as_str() {
                "version" => {
                    version = Some(
                        v.as_str()
                            .ok_or_else(|| malformed("version", "must be a string"))?
                            .to_owned(),
                    )
                }
                "anyOf" => any_of = Some(v),
                "allOf" => {
                    return Err(malformed(
                        "(top level)",
                        "must be anyOf of authority entries, found allOf",
                    ));
                }
                _ => {
                    return Err(ReleasePolicyError::UnknownMember {
                        path: "(top level)".into(),
                        member: k.clone(),
                    });
                }
            }
        }
        let any_of = any_of.ok_or_else(|| malformed("(top level)", "missing anyOf"))?;
        let entries = any_of
            .as_array()
            .ok_or_else(|| malformed("anyOf", "must be an array"))?;
        let any_of = entries
            .iter()
            .enumerate()
            .map(|(i, e)| parse_authority(e, &format!("anyOf[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ReleasePolicy { any_of, version })
    }
}

fn malformed(path: &str, problem: &str) -> ReleasePolicyError {
    ReleasePolicyError::Malformed {
        path: path.to_owned(),
        problem: problem.to_owned(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_object<'a>(
    v: &'a Value,
    path: &str,
) -> Result<&'a serde_json::Map<String, Value>, ReleasePolicyError> {
    v.as_object().ok_or_else(|| ReleasePolicyError::Malformed {
        path: path.to_owned(),
        problem: format!("must be an object, found {}", json_type(v)),
    })
}

fn parse_authority(v: &Value, path: &str) -> Result<AuthorityRule, ReleasePolicyError> {
    let obj = as_object(v, path)?;
    let mut authority = None;
    let mut conditions = None;
    for (k, v) in obj {
        match k.as_str() {
            "authority" => {
                authority = Some(
                    v.as_str()
                        .ok_or_else(|| malformed(&format!("{path}.authority"), "must be a string"))?
                        .to_owned(),
                )
            }
            "allOf" | "anyOf" => {
                if conditions.is_some() {
                    return Err(malformed(
                        path,
                        "has both allOf and anyOf (only one is allowed)",
                    ));
                }
                let list_path = format!("{path}.{k}");
                let items = v
                    .as_array()
                    .ok_or_else(|| malformed(&list_path, "must be an array"))?;
                let claims = items
                    .iter()
                    .enumerate()
                    .map(|(i, c)| parse_condition(c, &format!("{list_path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                conditions = Some(if k == "allOf" {
                    Conditions::AllOf(claims)
                } else {
                    Conditions::AnyOf(claims)
                });
            }
            _ => {
                return Err(ReleasePolicyError::UnknownMember {
                    path: path.to_owned(),
                    member: k.clone(),
                });
            }
        }
    }
    Ok(AuthorityRule {
        authority: authority.ok_or_else(|| malformed(path, "missing authority"))?,
        conditions: conditions.ok_or_else(|| malformed(path, "missing allOf or anyOf"))?,
    })
}

fn parse_condition(v: &Value, path: &str) -> Result<ClaimEquals, ReleasePolicyError> {
    let obj = as_object(v, path)?;
    if obj.contains_key("allOf") || obj.contains_key("anyOf") {
        return Err(ReleasePolicyError::Nested {
            path: path.to_owned(),
        });
    }
    let mut claim = None;
    let mut equals = None;
    let mut operator = None;
    let mut value = None;
    for (k, v) in obj {
        match k.as_str() {
            "claim" => {
                claim = Some(
                    v.as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| {
                            malformed(&format!("{path}.claim"), "must be a non-empty string")
                        })?
                        .to_owned(),
                )
            }
            "equals" => equals = Some(parse_value(v, &format!("{path}.equals"))?),
            // The older grammar: {"claim", "condition": "equals", "value"}.
            "condition" => {
                let op = v
                    .as_str()
                    .ok_or_else(|| malformed(&format!("{path}.condition"), "must be a string"))?;
                if op != "equals" {
                    return Err(ReleasePolicyError::UnsupportedOperator {
                        path: path.to_owned(),
                        operator: op.to_owned(),
                    });
                }
                operator = Some(());
            }
            "value" => value = Some(parse_value(v, &format!("{path}.value"))?),
            // Anything else in a condition is an operator we do not know (e.g. "contains").
            _ => {
                return Err(ReleasePolicyError::UnsupportedOperator {
                    path: path.to_owned(),
                    operator: k.clone(),
                });
            }
        }
    }
    let claim = claim.ok_or_else(|| malformed(path, "missing claim"))?;
    let equals = match (equals, operator, value) {
        (Some(e), None, None) => e,
        (None, Some(()), Some(v)) => v,
        (None, None, None) => return Err(malformed(path, "has no equals")),
        (None, Some(()), None) => return Err(malformed(path, "has condition but no value")),
        (None, None, Some(_)) => return Err(malformed(path, "has value but no condition")),
        (Some(_), _, _) => {
            return Err(malformed(
                path,
                "mixes equals with the older condition/value form",
            ));
        }
    };
    Ok(ClaimEquals { claim, equals })
}

fn parse_value(v: &Value, path: &str) -> Result<ClaimValue, ReleasePolicyError> {
    match v {
        Value::String(s) => Ok(ClaimValue::String(s.clone())),
        Value::Number(n) => Ok(ClaimValue::Number(n.clone())),
        Value::Bool(b) => Ok(ClaimValue::Bool(*b)),
        other => Err(ReleasePolicyError::InvalidValue {
            path: path.to_owned(),
            found: json_type(other),
        }),
    }
}
