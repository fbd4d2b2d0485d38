//! What the decision log keeps of an input document: values at the
//! `data.mcp.log.mask` JSON pointers replaced by [`MASKED`], then secrets
//! that look like secrets redacted from every remaining string.

use regex::Regex;
use serde_json::Value;

/// What a masked or redacted value is replaced with.
pub const MASKED: &str = mcp_core::redact::REDACTED;

// Built-in redaction rules, applied to every string of a logged input,
// are the ones output and audit excerpts use: `mcp_core::redact`. They
// catch credentials passed in argv, which the input must carry for the
// policy but the log must not keep.

/// [`masked_input`] for a raw document.
pub fn masked_value(mut value: Value, mask: &[String], redact: &[String]) -> Value {
    for pointer in mask {
        if pointer.is_empty() {
            return Value::String(MASKED.to_owned());
        }
        let Some(rest) = pointer.strip_prefix('/') else {
            // Not a pointer: mask nothing rather than guess.
            continue;
        };
        let segments: Vec<String> = rest.split('/').map(unescape).collect();
        mask_at(&mut value, &segments);
    }
    let extra: Vec<Regex> = redact.iter().filter_map(|p| Regex::new(p).ok()).collect();
    redact_strings(&mut value, &extra);
    value
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

fn mask_at(value: &mut Value, segments: &[String]) {
    let Some((first, rest)) = segments.split_first() else {
        *value = Value::String(MASKED.to_owned());
        return;
    };
    match value {
        Value::Object(map) => {
            if first == "*" {
                map.values_mut().for_each(|v| mask_at(v, rest));
            } else if let Some(v) = map.get_mut(first) {
                mask_at(v, rest);
            }
        }
        Value::Array(items) => {
            if first == "*" {
                items.iter_mut().for_each(|v| mask_at(v, rest));
            } else if let Some(v) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                mask_at(v, rest);
            }
        }
        _ => {}
    }
}

fn redact_strings(value: &mut Value, extra: &[Regex]) {
    match value {
        Value::String(s) => {
            if let Some(redacted) = redact_str(s, extra) {
                *s = redacted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_strings(v, extra)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_strings(v, extra)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The redacted string, or `None` when nothing matched (no allocation).
pub(crate) fn redact_str(s: &str, extra: &[Regex]) -> Option<String> {
    let mut out: Option<String> = match mcp_core::redact::Redactor::built_in().redact(s) {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(o) => Some(o),
    };
    for re in extra {
        let current = out.as_deref().unwrap_or(s);
        if re.is_match(current) {
            out = Some(re.replace_all(current, MASKED).into_owned());
        }
    }
    out
}

#[cfg(test)]
pub(crate) fn built_in_rule_count() -> usize {
    mcp_core::redact::built_in_rule_count()
}
