//! What the decision log keeps of an input document: values at the
//! `data.mcp.log.mask` JSON pointers replaced by [`MASKED`], then secrets
//! that look like secrets redacted from every remaining string.

use mcp_core::redact::Redactor;
use serde_json::Value;

/// What a masked or redacted value is replaced with.
pub const MASKED: &str = mcp_core::redact::REDACTED;

// Built-in redaction rules, applied to every string of a logged input,
// are the ones output and audit excerpts use: `mcp_core::redact`. They
// catch credentials passed in argv, which the input must carry for the
// policy but the log must not keep.

/// The input as the decision log keeps it. `mask` holds JSON pointers
/// (RFC 6901; a `*` segment matches every key or index) whose values are
/// replaced by [`MASKED`]; `""` masks the whole document. `redact` holds
/// extra regular expressions (the policy's `redact` obligation) whose
/// matches are replaced by [`MASKED`] in every string, after the built-in
/// rules; they come compiled from the shared cache, and one that does not
/// compile is ignored here (the decision decoder already refused it).
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
    let mut redactor = Redactor::built_in();
    redactor.add_compiled(
        redact
            .iter()
            .filter_map(|p| mcp_core::redact::compile_cached(p).ok()),
    );
    redact_strings(&mut value, &redactor);
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

fn redact_strings(value: &mut Value, redactor: &Redactor) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(redacted) = redactor.redact(s) {
                *s = redacted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_strings(v, redactor)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_strings(v, redactor)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The redacted string, or `None` when nothing matched: the built-in rules,
/// then `extra`, as [`masked_value`] applies them.
#[cfg(test)]
pub(crate) fn redact_str(s: &str, extra: &[regex::Regex]) -> Option<String> {
    let mut redactor = Redactor::built_in();
    redactor.add_compiled(
        extra
            .iter()
            .filter_map(|re| mcp_core::redact::compile_cached(re.as_str()).ok()),
    );
    match redactor.redact(s) {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(o) => Some(o),
    }
}

#[cfg(test)]
pub(crate) fn built_in_rule_count() -> usize {
    mcp_core::redact::built_in_rule_count()
}
