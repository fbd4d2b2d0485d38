//! Turns the value of `data.mcp.decision` into a [`Decision`], strictly: any
//! shape the gateway does not understand is an error, and the caller fails
//! closed on errors.

use mcp_core::{Decision, Obligations};
use serde_json::{Map, Value};

use crate::error::DecisionError;

/// Reason given when a policy denies without saying why, so a denial always
/// carries at least one reason.
const NO_REASON: &str = "denied by policy";

pub(crate) fn from_value(value: &Value, revision: &str) -> Result<Decision, DecisionError> {
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
    let obligations = obligations(obj.get("obligations"))?;

    if allow && !deny_reasons.is_empty() {
        return Err(DecisionError::AllowWithReasons(deny_reasons.len()));
    }
    let mut allow = allow;
    // An obligation the gateway cannot enforce turns an allow into a deny:
    // running the command without honouring it would break the policy's intent.
    for name in &obligations.unknown {
        allow = false;
        deny_reasons.push(format!(
            "obligation {name:?} is not supported by this gateway"
        ));
    }
    if !allow && deny_reasons.is_empty() {
        deny_reasons.push(NO_REASON.to_owned());
    }
    Ok(Decision {
        allow,
        deny_reasons,
        warnings,
        obligations,
        policy_revision: revision.to_owned(),
    })
}

/// A missing or `null` list is empty; anything else must be an array of
/// strings (a Rego set arrives here as an array).
fn strings(obj: &Map<String, Value>, field: &'static str) -> Result<Vec<String>, DecisionError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(DecisionError::NotStrings { field }),
        Some(_) => Err(DecisionError::NotStrings { field }),
    }
}

fn obligations(value: Option<&Value>) -> Result<Obligations, DecisionError> {
    let mut out = Obligations::default();
    let obj = match value {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(DecisionError::ObligationsNotObject),
    };
    for (key, value) in obj {
        match key.as_str() {
            "profile" => match value {
                Value::String(s) => out.profile = Some(s.clone()),
                _ => return Err(DecisionError::ProfileNotString),
            },
            _ => out.unknown.push(key.clone()),
        }
    }
    Ok(out)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
