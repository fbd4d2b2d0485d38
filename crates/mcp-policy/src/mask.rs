//! What the decision log keeps of an input document: values at the
//! `data.mcp.log.mask` JSON pointers replaced by [`MASKED`], then secrets
//! that look like secrets redacted from every remaining string.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// What a masked or redacted value is replaced with.
pub const MASKED: &str = "<masked>";

/// Built-in redaction rules, applied to every string of a logged input:
/// `(pattern, replacement)`. They catch credentials passed in argv, which
/// the input must carry for the policy but the log must not keep.
const BUILT_IN: &[(&str, &str)] = &[
    // --password=x, token: x, API_KEY=x, authorization=x
    (
        r"(?i)\b((?:[a-z0-9_]*[_-])?(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|authorization)[a-z0-9_]*)(\s*[=:]\s*)(?:(?:bearer|basic|token)\s+)?\S+",
        "${1}${2}<masked>",
    ),
    (r"(?i)\bbearer\s+[a-z0-9._~+/=-]+", "Bearer <masked>"),
    // Credentials in URLs: scheme://user:password@host
    (r"(://[^/\s:@]+:)[^/\s@]+@", "${1}<masked>@"),
    // AWS access key ids, GitHub and Slack tokens, PEM private keys.
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "<masked>"),
    (r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", "<masked>"),
    (r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b", "<masked>"),
    (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
        "<masked>",
    ),
];

static BUILT_IN_RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    BUILT_IN
        .iter()
        // The patterns are constants covered by tests; one that failed to
        // compile would be skipped rather than take the gateway down.
        .filter_map(|(p, r)| Regex::new(p).ok().map(|re| (re, *r)))
        .collect()
});

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
    let mut out: Option<String> = None;
    for (re, replacement) in BUILT_IN_RULES.iter() {
        let current = out.as_deref().unwrap_or(s);
        if re.is_match(current) {
            out = Some(re.replace_all(current, *replacement).into_owned());
        }
    }
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
    BUILT_IN_RULES.len()
}
