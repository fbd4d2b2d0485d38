//! Runs the Rego unit tests shipped beside the policies (OPA convention:
//! every rule named `test_*` must evaluate to `true`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::PolicyEngine;
use crate::engine::{describe, prepare, read_data, read_sources};
use crate::error::PolicyError;

/// What [`PolicyEngine::run_tests_with`] runs and measures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestOptions {
    /// Only tests whose full name (`data.<package>.<rule>`) matches this
    /// regular expression (`opa test -r`).
    pub filter: Option<String>,
    /// Measure line coverage of the policy files (not of the tests).
    pub coverage: bool,
}

/// The outcome of a test run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestReport {
    pub outcomes: Vec<TestOutcome>,
    /// Present when [`TestOptions::coverage`] was asked for.
    pub coverage: Option<CoverageReport>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.outcomes.len() - self.passed()
    }
}

/// Line coverage of the policy files by the tests that ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoverageReport {
    pub files: Vec<FileCoverage>,
}

impl CoverageReport {
    /// Covered lines over coverable lines of every file, in percent; 100
    /// when there is nothing to cover.
    pub fn percent(&self) -> f64 {
        let covered: usize = self.files.iter().map(|f| f.covered.len()).sum();
        let total: usize = self
            .files
            .iter()
            .map(|f| f.covered.len() + f.not_covered.len())
            .sum();
        percent(covered, total)
    }
}

/// Line coverage of one policy file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileCoverage {
    pub path: String,
    /// 1-based line numbers that evaluation went through.
    pub covered: Vec<u32>,
    /// Coverable lines that no test reached.
    pub not_covered: Vec<u32>,
}

impl FileCoverage {
    pub fn percent(&self) -> f64 {
        percent(
            self.covered.len(),
            self.covered.len() + self.not_covered.len(),
        )
    }
}

fn percent(covered: usize, total: usize) -> f64 {
    if total == 0 {
        100.0
    } else {
        // Line counts are far below 2^52: the conversion is exact.
        covered as f64 * 100.0 / total as f64
    }
}

/// The result of one `test_*` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestOutcome {
    /// The package, without the `data.` prefix (`mcp_test`).
    pub package: String,
    /// The rule name (`test_rm_is_denied`).
    pub name: String,
    pub passed: bool,
    /// Why the test failed: an evaluation error, or what it evaluated to
    /// instead of `true`.
    pub error: Option<String>,
    /// How long the test took.
    #[serde(serialize_with = "micros")]
    pub duration: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl PolicyEngine {
    /// Loads every `*.rego` of `dir` including `*_test.rego` (and
    /// `data.json`), then evaluates each rule named `test_*` of each package
    /// on its own, without input. A test passes iff it evaluates to `true`;
    /// undefined, `false` or an error fail it. Load errors are `Err`, test
    /// failures are outcomes.
    pub fn run_tests(dir: &Path) -> Result<Vec<TestOutcome>, PolicyError> {
        Ok(PolicyEngine::run_tests_with(dir, &TestOptions::default())?.outcomes)
    }

    /// Runs the tests of `dir` and fails with [`PolicyError::TestsFailed`]
    /// (naming each failed test and why) unless all pass: the gate of
    /// `policy build` and of a reload with `reload_requires_passing_tests`.
    pub(crate) fn require_passing_tests(dir: &Path) -> Result<(), PolicyError> {
        let failed: Vec<String> = PolicyEngine::run_tests(dir)?
            .into_iter()
            .filter(|o| !o.passed)
            .map(|o| format!("{}.{}: {}", o.package, o.name, o.error.unwrap_or_default()))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::TestsFailed {
                dir: dir.to_owned(),
                failed,
            })
        }
    }

    /// [`PolicyEngine::run_tests`] with a name filter and line coverage
    /// (`policy test`).
    pub fn run_tests_with(dir: &Path, options: &TestOptions) -> Result<TestReport, PolicyError> {
        let filter = options
            .filter
            .as_deref()
            .map(|p| {
                regex::Regex::new(p).map_err(|source| PolicyError::Filter {
                    pattern: p.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let sources = read_sources(dir, true)?;
        let data = read_data(dir)?;
        let mut engine = prepare(dir, &sources, data.as_ref())?;
        if options.coverage {
            engine.set_enable_coverage(true);
        }

        let packages =
            engine
                .get_policy_package_components()
                .map_err(|e| PolicyError::Compile {
                    dir: dir.to_owned(),
                    message: describe(&e),
                })?;

        let mut seen = BTreeSet::new();
        let mut outcomes = Vec::new();
        let mut coverage = CoverageMerge::default();
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
                if filter.as_ref().is_some_and(|f| !f.is_match(&rule)) {
                    continue;
                }
                let started = Instant::now();
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
                let duration = started.elapsed();
                if options.coverage {
                    let report =
                        engine
                            .get_coverage_report()
                            .map_err(|e| PolicyError::Coverage {
                                dir: dir.to_owned(),
                                message: describe(&e),
                            })?;
                    coverage.add(report);
                }
                outcomes.push(TestOutcome {
                    package,
                    name: name.to_owned(),
                    passed,
                    error,
                    duration,
                });
            }
        }
        let coverage = options.coverage.then(|| {
            let policies: Vec<_> = sources
                .iter()
                .filter(|s| !s.name.ends_with("_test.rego"))
                .collect();
            coverage.finish(&policies)
        });
        Ok(TestReport { outcomes, coverage })
    }
}

/// Coverage gathered over many engine clones: a line is covered if any test
/// reached it.
#[derive(Debug, Default)]
struct CoverageMerge {
    covered: BTreeMap<String, BTreeSet<u32>>,
    coverable: BTreeMap<String, BTreeSet<u32>>,
}

impl CoverageMerge {
    fn add(&mut self, report: regorus::coverage::Report) {
        for file in report.files {
            let coverable = self.coverable.entry(file.path.clone()).or_default();
            coverable.extend(file.covered.iter().copied());
            coverable.extend(file.not_covered.iter().copied());
            self.covered
                .entry(file.path)
                .or_default()
                .extend(file.covered);
        }
    }

    fn finish(self, policies: &[&crate::engine::SourceFile]) -> CoverageReport {
        let files = policies
            .iter()
            .map(|src| {
                let path = src.path.display().to_string();
                let covered = self.covered.get(&path).cloned().unwrap_or_default();
                // regorus reports nothing for a file no test touched: then
                // every line holding code counts as not covered.
                let coverable = self
                    .coverable
                    .get(&path)
                    .cloned()
                    .unwrap_or_else(|| code_lines(&src.text));
                FileCoverage {
                    path,
                    not_covered: coverable.difference(&covered).copied().collect(),
                    covered: covered.into_iter().collect(),
                }
            })
            .collect();
        CoverageReport { files }
    }
}

/// Lines that hold something other than blanks, comments, `package` and
/// `import`.
fn code_lines(text: &str) -> BTreeSet<u32> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim();
            !(l.is_empty()
                || l.starts_with('#')
                || l.starts_with("package ")
                || l.starts_with("import "))
        })
        .filter_map(|(i, _)| u32::try_from(i + 1).ok())
        .collect()
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
