//! Turns the value of `data.mcp.decision` into a [`Decision`] and the typed
//! [`ObligationSet`], strictly: any shape the gateway does not understand is
//! an error, and the caller fails closed on errors.

use std::collections::BTreeSet;

use mcp_core::{Decision, Obligations};
use serde_json::{Map, Value};

use crate::error::DecisionError;

/// Reason given when a policy denies without saying why, so a denial always
/// carries at least one reason.
const NO_REASON: &str = "denied by policy";

/// The shape `data.mcp.decision` must have; quoted in every shape error so
/// that the policy author sees what is expected, not only what is wrong.
pub const DECISION_SHAPE: &str = r#"{"allow": bool, "deny_reasons": [string], "warnings": [string], "obligations": {"profile"?: string, "limits"?: {"cpu_limit"?: number, "memory_bytes"?: int, "pids"?: int, "timeout_secs"?: int}, "require_approval"?: {"roles": [string], "reason": string, "requirements"?: [{"roles": [string], "reason": string}]}, "redact"?: [regex string], "network"?: [{"host": string, "port"?: int, "protocol"?: "tcp"|"udp"}]}}"#;

// The obligation types are domain types (mcp-core): the pipeline and the
// store use them without depending on the policy engine.
pub use mcp_core::{
    ApprovalObligation, ApprovalRequirement, Destination, LimitsObligation, ObligationKind,
    ObligationSet,
};

/// A decoded decision: the gateway-facing [`Decision`] and the typed
/// obligations behind it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    pub decision: Decision,
    pub obligations: ObligationSet,
}

/// Decodes `value`; obligations outside `enforced` are reported in
/// `decision.obligations.unknown` and turn an allow into a deny.
pub(crate) fn from_value(
    value: &Value,
    revision: &str,
    enforced: &BTreeSet<ObligationKind>,
) -> Result<Decoded, DecisionError> {
    let obj = value.as_object().ok_or(DecisionError::NotObject)?;
    if let Some(key) = obj.keys().find(|k| {
        !matches!(
            k.as_str(),
            "allow" | "deny_reasons" | "warnings" | "obligations"
        )
    }) {
        // A misspelt key (say `obligation`) would otherwise be dropped silently.
        return Err(DecisionError::UnknownKey(key.clone()));
    }
    let allow = match obj.get("allow") {
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(DecisionError::AllowNotBool(kind_of(other).to_owned())),
        None => return Err(DecisionError::AllowNotBool("missing".to_owned())),
    };
    let mut deny_reasons = strings(obj, "deny_reasons")?;
    let warnings = strings(obj, "warnings")?;
    let set = obligations(obj.get("obligations"))?;

    if allow && !deny_reasons.is_empty() {
        return Err(DecisionError::AllowWithReasons(deny_reasons.len()));
    }
    // What the gateway cannot enforce: keys that are no obligation at all,
    // and known obligations this gateway was not built to enforce.
    let mut unenforced: Vec<String> = set.unknown.clone();
    unenforced.extend(
        set.present()
            .into_iter()
            .filter(|k| !enforced.contains(k))
            .map(|k| k.as_str().to_owned()),
    );
    unenforced.sort();
    let mut allow = allow;
    // Running the command without honouring an obligation would break the
    // policy's intent, so each one the gateway cannot enforce denies.
    if allow {
        for name in &unenforced {
            allow = false;
            deny_reasons.push(format!(
                "obligation {name:?} is not supported by this gateway"
            ));
        }
    }
    if !allow && deny_reasons.is_empty() {
        deny_reasons.push(NO_REASON.to_owned());
    }
    Ok(Decoded {
        decision: Decision {
            allow,
            deny_reasons,
            warnings,
            obligations: Obligations {
                profile: set.profile.clone(),
                unknown: unenforced,
            },
            policy_revision: revision.to_owned(),
        },
        obligations: set,
    })
}

/// A missing or `null` list is empty; anything else must be an array of
/// strings (a Rego set arrives here as an array).
fn strings(obj: &Map<String, Value>, field: &'static str) -> Result<Vec<String>, DecisionError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => string_list(v).ok_or(DecisionError::NotStrings { field }),
    }
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn obligations(value: Option<&Value>) -> Result<ObligationSet, DecisionError> {
    let mut out = ObligationSet::default();
    let obj = match value {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(DecisionError::ObligationsNotObject),
    };
    for (key, value) in obj {
        let Some(kind) = ObligationKind::from_key(key) else {
            out.unknown.push(key.clone());
            continue;
        };
        let bad = |expected: &'static str| DecisionError::Obligation {
            name: kind.as_str(),
            expected,
            got: kind_of(value),
        };
        // `null` means "not set" for every obligation, so a policy can build
        // the object with optional parts.
        if value.is_null() {
            continue;
        }
        match kind {
            ObligationKind::Profile => {
                out.profile = Some(value.as_str().ok_or(bad("a string"))?.to_owned());
            }
            ObligationKind::Limits => out.limits = Some(limits(value).ok_or(bad(LIMITS_SHAPE))?),
            ObligationKind::RequireApproval => {
                out.require_approval = Some(approval(value).ok_or(bad(APPROVAL_SHAPE))?);
            }
            ObligationKind::Redact => {
                let patterns = string_list(value).ok_or(bad("an array of regex strings"))?;
                for p in &patterns {
                    // Checked here so that a broken pattern denies now
                    // rather than failing where output is redacted.
                    regex::Regex::new(p).map_err(|_| bad("an array of valid regexes"))?;
                }
                out.redact = patterns;
            }
            ObligationKind::Network => {
                out.network = Some(destinations(value).ok_or(bad(NETWORK_SHAPE))?);
            }
        }
    }
    Ok(out)
}

const LIMITS_SHAPE: &str = r#"an object {"cpu_limit"?: number, "memory_bytes"?: int, "pids"?: int, "timeout_secs"?: int} of non-negative numbers"#;
const APPROVAL_SHAPE: &str = r#"an object {"roles": [string, at least one], "reason": string, "requirements"?: [{"roles": [string, at least one], "reason": string}]}"#;
const NETWORK_SHAPE: &str =
    r#"an array of {"host": string, "port"?: 1-65535, "protocol"?: "tcp"|"udp"}"#;

fn limits(v: &Value) -> Option<LimitsObligation> {
    let obj = v.as_object()?;
    let mut out = LimitsObligation::default();
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "cpu_limit" => out.cpu_limit = Some(v.as_f64().filter(|f| *f >= 0.0)?),
            "memory_bytes" => out.memory_bytes = Some(v.as_u64()?),
            "pids" => out.pids = Some(v.as_u64()?),
            "timeout_secs" => out.timeout_secs = Some(v.as_u64()?),
            _ => return None,
        }
    }
    Some(out)
}

fn approval(v: &Value) -> Option<ApprovalObligation> {
    let obj = v.as_object()?;
    if obj
        .keys()
        .any(|k| !matches!(k.as_str(), "roles" | "reason" | "requirements"))
    {
        return None;
    }
    let (roles, reason) = roles_and_reason(obj)?;
    let requirements = match obj.get("requirements") {
        None | Some(Value::Null) => Vec::new(),
        Some(list) => list
            .as_array()?
            .iter()
            .map(|r| {
                let r = r.as_object()?;
                if r.keys().any(|k| k != "roles" && k != "reason") {
                    return None;
                }
                let (roles, reason) = roles_and_reason(r)?;
                Some(ApprovalRequirement { roles, reason })
            })
            .collect::<Option<Vec<_>>>()?,
    };
    let obligation = ApprovalObligation {
        roles,
        reason,
        requirements,
    };
    obligation.requirements_within_roles().then_some(obligation)
}

/// `roles` (at least one: an approval nobody can give fails closed) and
/// `reason` of an approval object.
fn roles_and_reason(obj: &Map<String, Value>) -> Option<(Vec<String>, String)> {
    let roles = string_list(obj.get("roles")?)?;
    if roles.is_empty() {
        return None;
    }
    let reason = obj.get("reason")?.as_str()?.to_owned();
    Some((roles, reason))
}

fn destinations(v: &Value) -> Option<Vec<Destination>> {
    v.as_array()?
        .iter()
        .map(|d| {
            let obj = d.as_object()?;
            if obj
                .keys()
                .any(|k| !matches!(k.as_str(), "host" | "port" | "protocol"))
            {
                return None;
            }
            let host = obj.get("host")?.as_str()?.to_owned();
            let port = match obj.get("port") {
                None | Some(Value::Null) => None,
                Some(p) => Some(u16::try_from(p.as_u64()?).ok().filter(|p| *p > 0)?),
            };
            let protocol = match obj.get("protocol") {
                None | Some(Value::Null) => "tcp".to_owned(),
                Some(p) => match p.as_str()? {
                    s @ ("tcp" | "udp") => s.to_owned(),
                    _ => return None,
                },
            };
            Some(Destination {
                host,
                port,
                protocol,
            })
        })
        .collect()
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
