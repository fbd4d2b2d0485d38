use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_core::Decision;
use regorus::utils::limits::ExecutionTimerConfig;
use sha2::{Digest, Sha256};

use crate::decision;
use crate::error::{DecisionError, PolicyError};
use crate::input::PolicyInput;

/// The rule every request is decided by.
pub(crate) const DECISION_RULE: &str = "data.mcp.decision";

/// The reason given to the client when evaluation fails; the details go to
/// the log only, since they may describe policy internals.
pub(crate) const EVAL_FAILED: &str = "policy evaluation failed";

/// Wall-clock budget of one evaluation. The shipped policies need well under
/// a millisecond; the budget only exists so a runaway policy denies instead
/// of hanging a request.
pub const DEFAULT_EVAL_TIME_LIMIT: Duration = Duration::from_millis(500);

/// How many interpreter work units pass between two clock reads.
const TIMER_CHECK_INTERVAL: u32 = 64;

/// One policy source file as read from disk.
#[derive(Debug)]
pub(crate) struct SourceFile {
    /// The bare file name; what the revision hashes.
    pub name: String,
    /// The full path; what regorus reports in errors.
    pub path: PathBuf,
    pub text: String,
}

/// A compiled policy set, ready to decide requests.
///
/// `PolicyEngine` is `Send + Sync` and meant to be shared (in an `Arc`) by
/// every request handler. [`PolicyEngine::decide`] never mutates it: each call
/// evaluates on a clone of the prepared regorus engine, which shares the
/// parsed modules and analysis with the original and only copies per-request
/// evaluation state.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: regorus::Engine,
    revision: String,
    files: Vec<String>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The regorus engine's own Debug dumps whole ASTs; names suffice.
        f.debug_struct("PolicyEngine")
            .field("revision", &self.revision)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Loads every `*.rego` file of `dir` except `*_test.rego` (not
    /// recursive), plus `dir/data.json` when present, as Rego v1, and
    /// compiles them. Parse and analysis errors surface here, with the file
    /// and position, never at the first request.
    pub fn load(dir: &Path) -> Result<PolicyEngine, PolicyError> {
        let sources = read_sources(dir, false)?;
        let data = read_data(dir)?;
        let engine = prepare(dir, &sources, data.as_ref())?;

        let mut hashed: Vec<(&str, &str)> = sources
            .iter()
            .map(|s| (s.name.as_str(), s.text.as_str()))
            .collect();
        if let Some((_, text)) = &data {
            hashed.push((DATA_FILE, text.as_str()));
        }
        let revision = revision(&mut hashed);
        tracing::debug!(revision = %revision, files = sources.len(), "policies loaded");

        Ok(PolicyEngine {
            engine,
            revision,
            files: sources.into_iter().map(|s| s.name).collect(),
        })
    }

    /// Replaces the wall-clock budget of one evaluation
    /// ([`DEFAULT_EVAL_TIME_LIMIT`] by default).
    pub fn with_eval_time_limit(mut self, limit: Duration) -> PolicyEngine {
        set_time_limit(&mut self.engine, limit);
        self
    }

    /// The first 12 hex digits of a SHA-256 over the sorted file names and
    /// contents of the loaded policy set; stamped on every decision.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Evaluates `data.mcp.decision` for `input`.
    ///
    /// Fails closed: an evaluation error (including running out of time), an
    /// undefined decision or one of the wrong shape yields a denial with the
    /// reason `policy evaluation failed`, and the cause is logged: its policy
    /// location at error level, the full message (which may quote input
    /// values such as argv) at debug level only.
    pub fn decide(&self, input: &PolicyInput) -> Decision {
        match self.evaluate(input) {
            Ok(decision) => decision,
            Err(err) => {
                tracing::error!(
                    error = %err.redacted(),
                    revision = %self.revision,
                    "policy evaluation failed, denying"
                );
                // The full message may quote input values (argv), so it
                // only goes out at debug level.
                tracing::debug!(error = %err, revision = %self.revision, "policy evaluation error detail");
                Decision::fail_closed(EVAL_FAILED, self.revision.clone())
            }
        }
    }

    pub(crate) fn evaluate(&self, input: &PolicyInput) -> Result<Decision, DecisionError> {
        let json = serde_json::to_string(input).map_err(|e| DecisionError::Input(e.to_string()))?;
        let input =
            regorus::Value::from_json_str(&json).map_err(|e| DecisionError::Input(describe(&e)))?;

        // Cheap: the clone shares the compiled policy (an Arc) and copies
        // only per-evaluation state, so concurrent requests never contend.
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let value = engine
            .eval_rule(DECISION_RULE.to_owned())
            .map_err(|e| DecisionError::Eval(describe(&e)))?;
        if value == regorus::Value::Undefined {
            return Err(DecisionError::Undefined);
        }
        let json = value
            .to_json_str()
            .map_err(|e| DecisionError::Decode(describe(&e)))?;
        let value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| DecisionError::Decode(e.to_string()))?;
        decision::from_value(&value, &self.revision)
    }
}

pub(crate) const DATA_FILE: &str = "data.json";

/// Reads the `*.rego` files of `dir` sorted by name; `*_test.rego` only when
/// `with_tests`.
pub(crate) fn read_sources(dir: &Path, with_tests: bool) -> Result<Vec<SourceFile>, PolicyError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| PolicyError::Read { path, source }
    };
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            if path.extension().is_some_and(|e| e == "rego") {
                return Err(PolicyError::NonUtf8Name { path });
            }
            continue;
        };
        if !name.ends_with(".rego") || (!with_tests && name.ends_with("_test.rego")) {
            continue;
        }
        // Follows symlinks, so a ConfigMap-style `..data` link farm works.
        if !std::fs::metadata(&path).map_err(read_err(&path))?.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
        sources.push(SourceFile { name, path, text });
    }
    if sources.is_empty() {
        return Err(PolicyError::NoPolicies {
            dir: dir.to_owned(),
        });
    }
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(sources)
}

/// Reads `dir/data.json` when present: its path and text.
pub(crate) fn read_data(dir: &Path) -> Result<Option<(PathBuf, String)>, PolicyError> {
    let path = dir.join(DATA_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some((path, text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PolicyError::Read { path, source }),
    }
}

/// Parses and analyses the sources once and returns the prepared engine that
/// every evaluation clones.
pub(crate) fn prepare(
    dir: &Path,
    sources: &[SourceFile],
    data: Option<&(PathBuf, String)>,
) -> Result<regorus::Engine, PolicyError> {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(false);
    set_time_limit(&mut engine, DEFAULT_EVAL_TIME_LIMIT);

    for src in sources {
        engine
            .add_policy(src.path.display().to_string(), src.text.clone())
            .map_err(|e| PolicyError::Parse {
                path: src.path.clone(),
                message: describe(&e),
            })?;
    }
    if let Some((path, text)) = data {
        let value = regorus::Value::from_json_str(text).map_err(|e| PolicyError::Data {
            path: path.clone(),
            message: describe(&e),
        })?;
        engine.add_data(value).map_err(|e| PolicyError::Data {
            path: path.clone(),
            message: describe(&e),
        })?;
    }

    // regorus analyses lazily, on the first evaluation. Evaluating a trivial
    // query here runs that analysis now, so a broken policy set fails at
    // load, and leaves the engine prepared: clones skip the analysis.
    engine
        .eval_query("true".to_owned(), false)
        .map_err(|e| PolicyError::Compile {
            dir: dir.to_owned(),
            message: describe(&e),
        })?;
    Ok(engine)
}

/// regorus errors in full (`{:#}` keeps the cause chain), without the
/// leading newline regorus puts before `--> file:line:col`.
pub(crate) fn describe(e: &dyn fmt::Display) -> String {
    format!("{e:#}").trim().to_owned()
}

fn set_time_limit(engine: &mut regorus::Engine, limit: Duration) {
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
    });
}

/// SHA-256 over `name NUL len contents` for each file in name order; the
/// length prefix keeps different splits of the same bytes apart.
pub(crate) fn revision(files: &mut [(&str, &str)]) -> String {
    files.sort_unstable();
    let mut h = Sha256::new();
    for (name, text) in files.iter() {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    let mut hex = hex::encode(h.finalize());
    hex.truncate(12);
    hex
}
