//! Redaction of secrets from text and command output: one rule set shared by
//! the decision log (`mcp-policy`), stored and streamed output and audit
//! excerpts (`mcp-gateway`).
//!
//! Rules are byte regexes, so output that is not UTF-8 is still scanned;
//! every match is replaced by [`REDACTED`] (key/value rules keep the key).
//! A [`Redactor`] is built once (built-in rules + patterns from config and
//! the policy's `redact` obligation + literal secret values of one task)
//! and applied many times.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use regex::bytes::{Regex, RegexBuilder};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "<masked>";

/// Built-in rules: `(name, pattern, replacement)`. They catch credentials
/// in argv and output: key/value pairs and bearer headers, passwords in
/// URLs, AWS access key ids and secret keys, GitHub, GitLab and Slack
/// tokens, JWTs and PEM private keys.
pub const BUILT_IN: &[(&str, &str, &str)] = &[
    (
        "pem_private_key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
        "<masked>",
    ),
    (
        "aws_secret_key",
        r"(?i)(aws_?secret_?access_?key|secret_?access_?key)(\s*[=:]\s*|\s+)[A-Za-z0-9/+=]{40}\b",
        "${1}${2}<masked>",
    ),
    // --password=x, token: x, API_KEY=x, authorization=x
    (
        "key_value",
        r"(?i)\b((?:[a-z0-9_]*[_-])?(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|authorization)[a-z0-9_]*)(\s*[=:]\s*)(?:(?:bearer|basic|token)\s+)?[^\s&;,]+",
        "${1}${2}<masked>",
    ),
    (
        "bearer",
        r"(?i)\bbearer\s+[a-z0-9._~+/=-]+",
        "Bearer <masked>",
    ),
    // Credentials in URLs: scheme://user:password@host
    ("url_password", r"(://[^/\s:@]+:)[^/\s@]+@", "${1}<masked>@"),
    (
        "aws_access_key_id",
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        "<masked>",
    ),
    (
        "github_token",
        r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
        "<masked>",
    ),
    (
        "github_pat",
        r"\bgithub_pat_[A-Za-z0-9_]{30,}\b",
        "<masked>",
    ),
    ("gitlab_token", r"\bglpat-[A-Za-z0-9_-]{20,}\b", "<masked>"),
    (
        "slack_token",
        r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b",
        "<masked>",
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
        "<masked>",
    ),
];

/// The longest text one pattern from outside may compile to.
const MAX_PATTERN_BYTES: usize = 1 << 20;

/// A pattern (from config or a policy obligation) that is not a valid
/// regex; callers fail closed on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redaction pattern {pattern:?} is not a valid regex: {reason}")]
pub struct BadPattern {
    pub pattern: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Rule {
    re: Regex,
    replacement: Cow<'static, str>,
}

static BUILT_IN_RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    BUILT_IN
        .iter()
        // The patterns are constants covered by tests; one that failed to
        // compile would be skipped rather than take the gateway down.
        .filter_map(|(_, p, r)| {
            Regex::new(p).ok().map(|re| Rule {
                re,
                replacement: Cow::Borrowed(*r),
            })
        })
        .collect()
});

/// How many built-in rules compiled (all of them, unless one is broken).
pub fn built_in_rule_count() -> usize {
    BUILT_IN_RULES.len()
}

/// A compiled set of redaction rules.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    extra: Vec<Rule>,
    /// Exact secret values (longest first), e.g. resolved `secret://` values.
    literals: Vec<Vec<u8>>,
}

/// Compiles one outside pattern; matches are replaced whole.
pub fn compile(pattern: &str) -> Result<Regex, BadPattern> {
    RegexBuilder::new(pattern)
        .size_limit(MAX_PATTERN_BYTES)
        .build()
        .map_err(|e| BadPattern {
            pattern: pattern.to_owned(),
            reason: e.to_string(),
        })
}

/// How many distinct outside patterns [`compile_cached`] keeps compiled.
const MAX_CACHED_PATTERNS: usize = 256;

static CACHE: LazyLock<Mutex<HashMap<String, Regex>>> = LazyLock::new(Mutex::default);

/// [`compile`], answered from a process-wide cache: policies name a handful
/// of `redact` patterns and every decision carries them again. A flood of
/// distinct patterns empties the cache rather than growing it.
pub fn compile_cached(pattern: &str) -> Result<Regex, BadPattern> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(re) = cache.get(pattern) {
        return Ok(re.clone());
    }
    let re = compile(pattern)?;
    if cache.len() >= MAX_CACHED_PATTERNS {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), re.clone());
    Ok(re)
}

impl Redactor {
    /// The built-in rules only.
    pub fn built_in() -> Self {
        Self::default()
    }

    /// The built-in rules and `patterns` (each match replaced whole).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, BadPattern> {
        let mut r = Self::default();
        r.add_patterns(patterns)?;
        Ok(r)
    }

    /// Adds patterns; nothing is added if one is bad.
    pub fn add_patterns<S: AsRef<str>>(&mut self, patterns: &[S]) -> Result<(), BadPattern> {
        let compiled = patterns
            .iter()
            .map(|p| compile(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        self.extra.extend(compiled.into_iter().map(|re| Rule {
            re,
            replacement: Cow::Borrowed(REDACTED),
        }));
        Ok(())
    }

    /// Adds already compiled patterns (e.g. cached policy obligations).
    pub fn add_compiled(&mut self, patterns: impl IntoIterator<Item = Regex>) {
        self.extra.extend(patterns.into_iter().map(|re| Rule {
            re,
            replacement: Cow::Borrowed(REDACTED),
        }));
    }

    /// Adds exact secret values; empty values are ignored.
    pub fn add_literal(&mut self, secret: &[u8]) {
        if !secret.is_empty() {
            self.literals.push(secret.to_vec());
            self.literals.sort_by_key(|l| std::cmp::Reverse(l.len()));
        }
    }

    /// Whether this redactor has task-specific literal secrets.
    pub fn has_literals(&self) -> bool {
        !self.literals.is_empty()
    }

    /// The longest literal secret, in bytes (for streaming carry buffers).
    pub fn longest_literal(&self) -> usize {
        self.literals.first().map_or(0, Vec::len)
    }

    /// `data` with every secret replaced; borrowed when nothing matched.
    pub fn redact_bytes<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out: Cow<'a, [u8]> = Cow::Borrowed(data);
        for lit in &self.literals {
            if let Some(replaced) = replace_literal(&out, lit) {
                out = Cow::Owned(replaced);
            }
        }
        for rule in BUILT_IN_RULES.iter().chain(self.extra.iter()) {
            // `replace_all` borrows when nothing matched: one scan per rule.
            if let Cow::Owned(replaced) = rule.re.replace_all(&out, rule.replacement.as_bytes()) {
                out = Cow::Owned(replaced);
            }
        }
        out
    }

    /// [`Redactor::redact_bytes`] for text.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
        }
    }
}

fn replace_literal(data: &[u8], lit: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut found = false;
    while let Some(pos) = find(rest, lit) {
        found = true;
        out.extend_from_slice(&rest[..pos]);
        out.extend_from_slice(REDACTED.as_bytes());
        rest = &rest[pos + lit.len()..];
    }
    if !found {
        return None;
    }
    out.extend_from_slice(rest);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Redacts a stream of output a line at a time: complete lines are
/// redacted and released, the unfinished last line is held back (up to
/// `max_carry` bytes, then released redacted as it is), so a secret split
/// across two chunks is still seen whole. Lines longer than the carry are
/// the one case a split secret can slip through; the carry is sized well
/// above any token the rules know.
#[derive(Debug)]
pub struct LineRedactor {
    carry: Vec<u8>,
    max_carry: usize,
}

impl LineRedactor {
    pub fn new(max_carry: usize) -> Self {
        Self {
            carry: Vec::new(),
            max_carry: max_carry.max(1),
        }
    }

    /// Feeds a chunk; answers what can be released now (already redacted).
    pub fn push(&mut self, redactor: &Redactor, chunk: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        let cut = match self.carry.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if self.carry.len() > self.max_carry => self.carry.len(),
            None => return Vec::new(),
        };
        // A PEM block spans lines: hold an open one back until it ends (or
        // the carry is full), so its middle lines are never released.
        let head = &self.carry[..cut];
        if self.carry.len() <= self.max_carry && opens_pem_block(head) {
            return Vec::new();
        }
        let out = redactor.redact_bytes(head).into_owned();
        self.carry.drain(..cut);
        out
    }

    /// Releases whatever is held, redacted (at the end of the stream).
    pub fn finish(&mut self, redactor: &Redactor) -> Vec<u8> {
        let out = redactor.redact_bytes(&self.carry).into_owned();
        self.carry.clear();
        out
    }
}

fn opens_pem_block(data: &[u8]) -> bool {
    let Some(b) = rfind(data, b"-----BEGIN ") else {
        return false;
    };
    let after = &data[b..];
    let line_end = after
        .iter()
        .position(|&c| c == b'\n')
        .unwrap_or(after.len());
    let is_private = find(&after[..line_end], b"PRIVATE KEY").is_some();
    // An END after the last BEGIN closes it.
    is_private && find(after, b"-----END").is_none()
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests;
