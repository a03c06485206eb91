//! Key release policies as Key Vault evaluates them, independently of the operator's own builder
//! (a double that shared the operator's code could not catch the operator's mistakes).
//!
//! Grammar (Microsoft's key-management policy grammar, aka.ms/policygrammarkeys):
//! `{"version": "1.0.0", "anyOf": [{"authority": <issuer>, "allOf"|"anyOf": [<condition>...]}]}`;
//! a condition is `{"claim": <name>, "equals": <value>}`, or in the older grammar that policies read
//! back from a vault may use, `{"claim": <name>, "condition": "equals", "value": <value>}`.

use serde_json::Value;

/// Why a policy document is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not JSON, or not an object.
    #[error("the release policy is not a JSON object: {0}")]
    NotJson(String),
    /// Top level without a non-empty `anyOf`.
    #[error("the release policy must have a non-empty top-level \"anyOf\" list of authorities")]
    NoAuthorities,
    /// An authority entry is malformed.
    #[error("authority #{0}: {1}")]
    Authority(usize, String),
    /// A condition is malformed.
    #[error("authority #{0}, condition #{1}: {2}")]
    Condition(usize, usize, String),
}

/// How the conditions of one authority combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Every condition must hold.
    AllOf,
    /// At least one condition must hold.
    AnyOf,
}

/// One `claim equals value` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Claim name, dot notation for nested claims.
    pub claim: String,
    /// Expected value: string, number or boolean.
    pub equals: Value,
}

/// One authority entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorityRule {
    /// The issuer the token must come from.
    pub authority: String,
    /// allOf or anyOf.
    pub combine: Combine,
    /// The conditions.
    pub conditions: Vec<Condition>,
}

/// A parsed release policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleasePolicy {
    /// `version` if present (absent in the older grammar).
    pub version: Option<String>,
    /// The authorities, any of which may satisfy the policy.
    pub authorities: Vec<AuthorityRule>,
}

/// The outcome of evaluating a policy against a token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evaluation {
    /// An authority matched the issuer and its conditions hold.
    Satisfied,
    /// No authority of the policy is the token's issuer.
    UnknownAuthority,
    /// The issuer is an authority of the policy but its conditions fail: the first failing claim
    /// of each matching authority, for the error message.
    Unsatisfied(Vec<String>),
}

impl ReleasePolicy {
    /// Parses either grammar. Nested `anyOf`/`allOf` inside conditions is refused: the SKR
    /// concept page says combining is "not yet" supported, so a policy relying on it would not
    /// behave the same in Azure.
    pub fn parse(json: &[u8]) -> Result<Self, PolicyError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| PolicyError::NotJson(e.to_string()))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| PolicyError::NotJson("not an object".into()))?;
        let version = match obj.get("version") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(PolicyError::NotJson("\"version\" must be a string".into())),
        };
        let list = obj
            .get("anyOf")
            .and_then(Value::as_array)
            .filter(|l| !l.is_empty())
            .ok_or(PolicyError::NoAuthorities)?;
        let mut authorities = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let entry = entry
                .as_object()
                .ok_or_else(|| PolicyError::Authority(i, "not an object".into()))?;
            let authority = entry
                .get("authority")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
                .ok_or_else(|| PolicyError::Authority(i, "missing \"authority\"".into()))?;
            let (combine, conds) = match (entry.get("allOf"), entry.get("anyOf")) {
                (Some(c), None) => (Combine::AllOf, c),
                (None, Some(c)) => (Combine::AnyOf, c),
                (Some(_), Some(_)) => {
                    return Err(PolicyError::Authority(
                        i,
                        "has both \"allOf\" and \"anyOf\"".into(),
                    ));
                }
                (None, None) => {
                    return Err(PolicyError::Authority(
                        i,
                        "has neither \"allOf\" nor \"anyOf\"".into(),
                    ));
                }
            };
            let conds = conds.as_array().filter(|c| !c.is_empty()).ok_or_else(|| {
                PolicyError::Authority(i, "conditions must be a non-empty list".into())
            })?;
            let mut conditions = Vec::new();
            for (j, c) in conds.iter().enumerate() {
                conditions.push(parse_condition(c).map_err(|m| PolicyError::Condition(i, j, m))?);
            }
            authorities.push(AuthorityRule {
                authority: authority.to_owned(),
                combine,
                conditions,
            });
        }
        Ok(Self {
            version,
            authorities,
        })
    }

    /// The authorities that name `issuer` (compared like a JWT `iss`, ignoring a trailing slash).
    pub fn authorities_for<'a>(&'a self, issuer: &str) -> impl Iterator<Item = &'a AuthorityRule> {
        let issuer = issuer.trim_end_matches('/').to_owned();
        self.authorities
            .iter()
            .filter(move |a| a.authority.trim_end_matches('/') == issuer)
    }

    /// Evaluates the policy for a token from `issuer` carrying `claims`. The signature and
    /// lifetime of the token are checked elsewhere, before this.
    pub fn evaluate(&self, issuer: &str, claims: &Value) -> Evaluation {
        let mut failures = Vec::new();
        let mut any = false;
        for rule in self.authorities_for(issuer) {
            any = true;
            let results: Vec<(&Condition, bool)> = rule
                .conditions
                .iter()
                .map(|c| (c, condition_holds(c, claims)))
                .collect();
            let ok = match rule.combine {
                Combine::AllOf => results.iter().all(|(_, r)| *r),
                Combine::AnyOf => results.iter().any(|(_, r)| *r),
            };
            if ok {
                return Evaluation::Satisfied;
            }
            if let Some((c, _)) = results.iter().find(|(_, r)| !*r) {
                failures.push(c.claim.clone());
            }
        }
        if any {
            Evaluation::Unsatisfied(failures)
        } else {
            Evaluation::UnknownAuthority
        }
    }
}

fn parse_condition(c: &Value) -> Result<Condition, String> {
    let obj = c.as_object().ok_or("not an object")?;
    if obj.contains_key("anyOf") || obj.contains_key("allOf") {
        return Err("nested anyOf/allOf is not supported for key release".into());
    }
    let claim = obj
        .get("claim")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("missing \"claim\"")?;
    let value = match (obj.get("equals"), obj.get("condition"), obj.get("value")) {
        (Some(v), None, None) => v,
        (None, Some(Value::String(op)), Some(v)) if op.eq_ignore_ascii_case("equals") => v,
        (None, Some(op), Some(_)) => return Err(format!("unsupported condition operator {op}")),
        _ => return Err("needs \"equals\" (or \"condition\": \"equals\" with \"value\")".into()),
    };
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(Condition {
            claim: claim.to_owned(),
            equals: value.clone(),
        }),
        _ => Err("the expected value must be a string, number or boolean".into()),
    }
}

/// Looks a claim up: first as a literal top-level name, then by dot notation for nested claims
/// (`x-ms-isolation-tee.x-ms-attestation-type`).
pub fn lookup_claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut cur = claims;
    for part in name.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

/// Does the condition hold? A missing claim makes it false.
pub fn condition_holds(c: &Condition, claims: &Value) -> bool {
    lookup_claim(claims, &c.claim).is_some_and(|actual| values_equal(&c.equals, actual))
}

/// Equality between a policy value and a claim value.
///
/// NB: MAA tokens carry `x-ms-sevsnpvm-is-debuggable` as JSON `false` and `x-ms-sevsnpvm-vmpl` as
/// the number `0`, while Microsoft's published release policies (confidential-container-demos
/// `setup-key.sh`, the sidecar's `importkeyconfig.json`) compare them with the strings `"false"`
/// and `"0"`, and are documented as working. So a string matches a boolean or number whose JSON
/// text it is, in both directions. This coercion is inferred from how those policies behave; the
/// grammar document does not state it.
pub fn values_equal(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => numbers_equal(a, b),
        (Value::String(s), Value::Bool(b)) | (Value::Bool(b), Value::String(s)) => {
            s == if *b { "true" } else { "false" }
        }
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => s
            .parse::<serde_json::Number>()
            .is_ok_and(|parsed| numbers_equal(&parsed, n)),
        _ => false,
    }
}

fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn aks_policy(hash: &str) -> Value {
        json!({"version": "1.0.0", "anyOf": [{"authority": "https://sharedeus.eus.attest.azure.net", "allOf": [
            {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
            {"claim": "x-ms-sevsnpvm-hostdata", "equals": hash},
            {"claim": "x-ms-compliance-status", "equals": "azure-signed-katacc-uvm"},
            {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"},
            {"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"}]}]})
    }

    fn claims(hash: &str) -> Value {
        json!({"iss": "https://sharedeus.eus.attest.azure.net/", "x-ms-attestation-type": "sevsnpvm",
               "x-ms-sevsnpvm-hostdata": hash, "x-ms-compliance-status": "azure-signed-katacc-uvm",
               "x-ms-sevsnpvm-is-debuggable": false, "x-ms-sevsnpvm-vmpl": 0})
    }

    fn parse(v: &Value) -> ReleasePolicy {
        ReleasePolicy::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn aks_policy_is_satisfied_by_matching_claims_with_trailing_slash_issuer() {
        let p = parse(&aks_policy("ab"));
        assert_eq!(
            p.evaluate("https://sharedeus.eus.attest.azure.net/", &claims("ab")),
            Evaluation::Satisfied
        );
    }

    #[test]
    fn other_hash_debuggable_or_issuer_are_refused() {
        let p = parse(&aks_policy("ab"));
        let iss = "https://sharedeus.eus.attest.azure.net";
        assert_eq!(
            p.evaluate(iss, &claims("cd")),
            Evaluation::Unsatisfied(vec!["x-ms-sevsnpvm-hostdata".into()])
        );
        let mut c = claims("ab");
        c["x-ms-sevsnpvm-is-debuggable"] = json!(true);
        assert!(matches!(p.evaluate(iss, &c), Evaluation::Unsatisfied(_)));
        c = claims("ab");
        c.as_object_mut().unwrap().remove("x-ms-sevsnpvm-vmpl");
        assert!(matches!(p.evaluate(iss, &c), Evaluation::Unsatisfied(_)));
        assert_eq!(
            p.evaluate("https://evil.attest.azure.net", &claims("ab")),
            Evaluation::UnknownAuthority
        );
    }

    #[test]
    fn older_grammar_from_the_spec_example_parses_and_evaluates() {
        let text = include_str!("../tests/data/ReleasePolicy-example.json");
        let p = ReleasePolicy::parse(text.as_bytes()).unwrap();
        assert_eq!(p.version, None);
        assert_eq!(p.authorities[0].authority, "http://localhost:8023/");
        let ok = json!({"x-ms-sgx-mrsigner": "86788fe40448f2a12e20bf8d5e7a1c3139bc5fdc1432b370c1da3489ab649a85",
                        "x-ms-sgx-is-debuggable": false});
        assert_eq!(
            p.evaluate("http://localhost:8023", &ok),
            Evaluation::Satisfied
        );
        let bad = json!({"x-ms-sgx-mrsigner": "00", "x-ms-sgx-is-debuggable": false});
        assert!(matches!(
            p.evaluate("http://localhost:8023", &bad),
            Evaluation::Unsatisfied(_)
        ));
    }

    #[test]
    fn any_of_authority_and_several_authorities() {
        let p = parse(&json!({"version": "1.0.0", "anyOf": [
            {"authority": "https://a", "allOf": [{"claim": "h", "equals": "1"}]},
            {"authority": "https://a", "allOf": [{"claim": "h", "equals": "2"}]},
            {"authority": "https://b", "anyOf": [{"claim": "x", "equals": 1}, {"claim": "y", "equals": true}]}]}));
        assert_eq!(
            p.evaluate("https://a", &json!({"h": "2"})),
            Evaluation::Satisfied
        );
        assert!(matches!(
            p.evaluate("https://a", &json!({"h": "3"})),
            Evaluation::Unsatisfied(_)
        ));
        assert_eq!(
            p.evaluate("https://b", &json!({"y": "true"})),
            Evaluation::Satisfied
        );
        assert!(matches!(
            p.evaluate("https://b", &json!({"x": 2})),
            Evaluation::Unsatisfied(_)
        ));
    }

    #[test]
    fn dot_notation_reaches_nested_claims() {
        let p = parse(&json!({"anyOf": [{"authority": "https://a", "allOf": [
            {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"}]}]}));
        assert_eq!(
            p.evaluate(
                "https://a",
                &json!({"x-ms-isolation-tee": {"x-ms-attestation-type": "sevsnpvm"}})
            ),
            Evaluation::Satisfied
        );
    }

    #[test]
    fn coercion_is_limited_to_the_json_text_of_the_value() {
        assert!(values_equal(&json!("false"), &json!(false)));
        assert!(!values_equal(&json!("False"), &json!(false)));
        assert!(values_equal(&json!("0"), &json!(0)));
        assert!(!values_equal(&json!("0"), &json!(1)));
        assert!(!values_equal(&json!("0"), &json!(false)));
        assert!(values_equal(&json!(0), &json!("0")));
        assert!(!values_equal(&json!("ab"), &json!("AB")));
    }

    #[test]
    fn malformed_policies_are_refused() {
        for bad in [
            json!({}),
            json!({"anyOf": []}),
            json!({"anyOf": [{"authority": "https://a"}]}),
            json!({"anyOf": [{"authority": "https://a", "allOf": [], }]}),
            json!({"anyOf": [{"authority": "https://a", "allOf": [{"claim": "c", "equals": {"o": 1}}]}]}),
            json!({"anyOf": [{"authority": "https://a", "allOf": [{"claim": "c", "condition": "greater", "value": 1}]}]}),
            json!({"anyOf": [{"authority": "https://a", "allOf": [{"anyOf": [{"claim": "c", "equals": 1}]}]}]}),
            json!({"anyOf": [{"authority": "https://a", "allOf": [{"claim": "c", "equals": 1}], "anyOf": [{"claim": "c", "equals": 1}]}]}),
        ] {
            assert!(
                ReleasePolicy::parse(bad.to_string().as_bytes()).is_err(),
                "{bad}"
            );
        }
        assert!(ReleasePolicy::parse(b"not json").is_err());
    }
}
