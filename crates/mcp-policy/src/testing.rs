//! Runs the Rego unit tests shipped beside the policies (OPA convention:
//! every rule named `test_*` must evaluate to `true`).

use std::collections::BTreeSet;
use std::path::Path;

use crate::PolicyEngine;
use crate::engine::{describe, prepare, read_data, read_sources};
use crate::error::PolicyError;

/// The result of one `test_*` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// The package, without the `data.` prefix (`mcp_test`).
    pub package: String,
    /// The rule name (`test_rm_is_denied`).
    pub name: String,
    pub passed: bool,
    /// Why the test failed: an evaluation error, or what it evaluated to
    /// instead of `true`.
    pub error: Option<String>,
}

impl PolicyEngine {
    /// Loads every `*.rego` of `dir` including `*_test.rego` (and
    /// `data.json`), then evaluates each rule named `test_*` of each package
    /// on its own, without input. A test passes iff it evaluates to `true`;
    /// undefined, `false` or an error fail it. Load errors are `Err`, test
    /// failures are outcomes.
    pub fn run_tests(dir: &Path) -> Result<Vec<TestOutcome>, PolicyError> {
        let sources = read_sources(dir, true)?;
        let data = read_data(dir)?;
        let engine = prepare(dir, &sources, data.as_ref())?;

        let packages =
            engine
                .get_policy_package_components()
                .map_err(|e| PolicyError::Compile {
                    dir: dir.to_owned(),
                    message: describe(&e),
                })?;

        let mut seen = BTreeSet::new();
        let mut outcomes = Vec::new();
        for (src, pkg) in sources.iter().zip(&packages) {
            let source_path = src.path.display().to_string();
            for name in test_candidates(&src.text) {
                // The scan finds every `test_*` token; regorus confirms which
                // ones are rules declared by this module.
                if !engine
                    .has_declared_rule_rooted_at(&source_path, name)
                    .unwrap_or(false)
                {
                    continue;
                }
                let package = pkg.components.join(".");
                if !seen.insert((package.clone(), name.to_owned())) {
                    continue;
                }
                let rule = format!("{}.{name}", rule_prefix(&pkg.components));
                let mut engine = engine.clone();
                let (passed, error) = match engine.eval_rule(rule) {
                    Ok(regorus::Value::Bool(true)) => (true, None),
                    Ok(regorus::Value::Undefined) => (false, Some("undefined".to_owned())),
                    Ok(other) => (
                        false,
                        Some(format!(
                            "evaluated to {}",
                            other.to_json_str().unwrap_or_else(|_| format!("{other:?}"))
                        )),
                    ),
                    Err(e) => (false, Some(describe(&e))),
                };
                outcomes.push(TestOutcome {
                    package,
                    name: name.to_owned(),
                    passed,
                    error,
                });
            }
        }
        Ok(outcomes)
    }
}

/// `data` followed by the package components, bracketed where a component
/// is not a plain identifier.
pub(crate) fn rule_prefix(components: &[String]) -> String {
    let mut out = String::from("data");
    for c in components {
        if is_ident(c) {
            out.push('.');
            out.push_str(c);
        } else {
            out.push_str(&format!("[{c:?}]"));
        }
    }
    out
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Every identifier starting with `test_` in `text`, in order of first
/// appearance, that is not a field access (`x.test_y`).
pub(crate) fn test_candidates(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let is_ident_byte = |b: u8| b == b'_' || b.is_ascii_alphanumeric();
    let mut out: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident_byte(bytes[i]) {
            i += 1;
        }
        let word = &text[start..i];
        let after_dot = start > 0 && bytes[start - 1] == b'.';
        if word.starts_with("test_") && !after_dot && !out.contains(&word) {
            out.push(word);
        }
    }
    out
}
