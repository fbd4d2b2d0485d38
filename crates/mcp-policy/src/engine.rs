use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mcp_core::Decision;
use regorus::utils::limits::ExecutionTimerConfig;
use sha2::{Digest, Sha256};

use crate::decision::{self, Decoded, ObligationKind, ObligationSet};
use crate::error::{DecisionError, FailureKind, PolicyError};
use crate::input::PolicyInput;
use crate::vm::{Compiled, Run};

/// The rule every request is decided by.
pub(crate) const DECISION_RULE: &str = "data.mcp.decision";

/// The rule naming the JSON pointers of the input that the decision log must
/// not keep (OPA's `system.log.mask`, in our namespace).
pub const MASK_RULE: &str = "data.mcp.log.mask";

/// What regorus answers when asked for a rule path that no policy defines.
const NO_SUCH_RULE: &str = "not a valid rule path";

/// The package [`MASK_RULE`] lives in.
const MASK_PACKAGE: &str = "data.mcp.log";

/// The reason given to the client when evaluation fails; the details go to
/// the log only, since they may describe policy internals.
pub(crate) const EVAL_FAILED: &str = "policy evaluation failed";

/// Wall-clock budget of one evaluation. The shipped policies need well under
/// a millisecond; the budget only exists so a runaway policy denies instead
/// of hanging a request.
pub const DEFAULT_EVAL_TIME_LIMIT: Duration = Duration::from_millis(500);

/// How many interpreter work units pass between two clock reads.
const TIMER_CHECK_INTERVAL: u32 = 64;

/// Bounds on the input document, checked before it reaches the evaluator:
/// a request past them is denied without evaluating any policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// The input document as JSON, in bytes. The default, 1 MiB, is well
    /// above the largest request the gateway validates (128 KiB of args).
    pub max_bytes: usize,
    /// Nesting of arrays and objects. The typed parts of the input are at
    /// most 5 deep; the default 32 leaves room for MCP tool arguments.
    pub max_depth: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_bytes: 1024 * 1024,
            max_depth: 32,
        }
    }
}

/// How a policy set is loaded and evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Wall-clock budget of one evaluation.
    pub eval_time_limit: Duration,
    /// The obligations the caller enforces. Any other obligation a policy
    /// sets denies the request. The gateway enforces `profile` only today.
    pub enforced: BTreeSet<ObligationKind>,
    pub input_limits: InputLimits,
    /// Use this file as `data` instead of `DIR/data.json` (`policy eval
    /// --data`, tests).
    pub data_file: Option<PathBuf>,
    /// When set, a policy bundle is loaded only if its `.signatures.json`
    /// is signed by this key and covers exactly its files.
    pub bundle_key: Option<ed25519_dalek::VerifyingKey>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            eval_time_limit: DEFAULT_EVAL_TIME_LIMIT,
            enforced: BTreeSet::from([ObligationKind::Profile]),
            input_limits: InputLimits::default(),
            data_file: None,
            bundle_key: None,
        }
    }
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    /// What the gateway enforces. Obligations it does not enforce are listed
    /// in `decision.obligations.unknown` and have already turned an allow
    /// into a deny.
    pub decision: Decision,
    /// Every obligation the policy set, typed.
    pub obligations: ObligationSet,
    /// JSON pointers (RFC 6901, `*` matching any key or index) of the input
    /// to mask in the decision log, from [`MASK_RULE`]. `[""]` (the whole
    /// document) when the rule failed, so nothing leaks by mistake.
    pub mask: Vec<String>,
    /// The revision that decided.
    pub revision: String,
    /// Wall-clock time of the evaluation, input encoding included.
    pub latency: Duration,
    /// The decision of the shadow (candidate) policy set, when one is
    /// configured ([`crate::PolicyService`]); never enforced.
    pub shadow: Option<Decision>,
    /// Why the decision failed closed. Its detail may quote input values
    /// (argv), so it is for `policy eval` and debug logs only.
    pub failure: Option<Failure>,
}

/// Why an evaluation failed closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// The whole message; may quote input values.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl Evaluated {
    /// The input as the decision log keeps it: [`Evaluated::mask`] applied,
    /// then the built-in redaction rules and the policy's `redact` patterns.
    pub fn logged_input(&self, input: &PolicyInput) -> serde_json::Value {
        let value = serde_json::to_value(input).unwrap_or(serde_json::Value::Null);
        crate::mask::masked_value(value, &self.mask, &self.obligations.redact)
    }
}

/// What `policy eval --explain` shows besides the decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub evaluated: Evaluated,
    /// Every rule of package `mcp` that is defined for this input, with its
    /// value: the rules that contributed to the decision.
    pub rules: serde_json::Value,
    /// The output of `print()` calls, in order.
    pub prints: Vec<String>,
    /// Per policy file, the lines the evaluation went through.
    pub lines: Vec<(String, Vec<u32>)>,
}

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
    /// The same set compiled to bytecode: what requests are decided on.
    /// `None` when the VM compiler does not accept the set; requests are
    /// then evaluated on `engine` (the interpreter).
    compiled: Option<Compiled>,
    revision: String,
    dir: PathBuf,
    files: Vec<String>,
    has_mask: bool,
    options: EngineOptions,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The regorus engine's own Debug dumps whole ASTs; names suffice.
        f.debug_struct("PolicyEngine")
            .field("revision", &self.revision)
            .field("dir", &self.dir)
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
        PolicyEngine::load_with(dir, EngineOptions::default())
    }

    /// [`PolicyEngine::load`] with options.
    ///
    /// `dir` may also be a policy bundle (`.tar.gz`, see
    /// [`crate::build_bundle`]): its `*.rego` files and every `data.json`
    /// by path, verified against [`EngineOptions::bundle_key`] when set.
    pub fn load_with(dir: &Path, options: EngineOptions) -> Result<PolicyEngine, PolicyError> {
        if crate::bundle::is_bundle(dir) {
            return PolicyEngine::load_bundle(dir, options);
        }
        let sources = read_sources(dir, false)?;
        let data = match &options.data_file {
            Some(path) => Some(read_file(path)?),
            None => read_data(dir)?,
        };
        let engine = prepare(dir, &sources, data.as_ref())?;
        let mut hashed: Vec<(&str, &str)> = sources
            .iter()
            .map(|s| (s.name.as_str(), s.text.as_str()))
            .collect();
        if let Some((_, text)) = &data {
            hashed.push((DATA_FILE, text.as_str()));
        }
        let revision = revision(&mut hashed);
        let files = sources.into_iter().map(|s| s.name).collect();
        PolicyEngine::finish(dir, engine, revision, files, options)
    }

    fn load_bundle(path: &Path, options: EngineOptions) -> Result<PolicyEngine, PolicyError> {
        let bundle = crate::bundle::read(path, options.bundle_key.as_ref())?;
        let text = |name: &str, bytes: &[u8]| {
            String::from_utf8(bytes.to_vec()).map_err(|_| PolicyError::Bundle {
                path: path.to_owned(),
                reason: format!("{name} is not UTF-8"),
            })
        };
        let mut sources = Vec::new();
        let mut data = Vec::new();
        for (name, bytes) in &bundle.files {
            if name.ends_with(".rego") && !name.ends_with("_test.rego") {
                sources.push(SourceFile {
                    name: name.clone(),
                    path: path.join(name),
                    text: text(name, bytes)?,
                });
            } else if let Some(at) = crate::bundle::data_path(name) {
                data.push((path.join(name), text(name, bytes)?, at));
            }
        }
        // `policy eval --data FILE`: that file is all of `data`.
        if let Some(file) = &options.data_file {
            let (p, t) = read_file(file)?;
            data = vec![(p, t, Vec::new())];
        }
        if sources.is_empty() {
            return Err(PolicyError::NoPolicies {
                dir: path.to_owned(),
            });
        }
        let docs: Vec<DataDoc<'_>> = data
            .iter()
            .map(|(p, t, at)| DataDoc {
                path: p.clone(),
                text: t,
                at: at.clone(),
            })
            .collect();
        let engine = prepare_docs(path, &sources, &docs)?;
        // Every file counts, tests and manifest included: the revision
        // names the bundle's content, the manifest's revision names it for
        // people.
        let mut hashed: Vec<(&str, &str)> = Vec::new();
        let lossy: Vec<(String, String)> = bundle
            .files
            .iter()
            .map(|(n, b)| (n.clone(), String::from_utf8_lossy(b).into_owned()))
            .collect();
        hashed.extend(lossy.iter().map(|(n, t)| (n.as_str(), t.as_str())));
        let hash = revision(&mut hashed);
        let revision = if bundle.manifest.revision.is_empty() {
            hash
        } else {
            format!("{}+{hash}", bundle.manifest.revision)
        };
        let files = sources.into_iter().map(|s| s.name).collect();
        PolicyEngine::finish(path, engine, revision, files, options)
    }

    /// The common end of loading a directory or a bundle: time limit, mask
    /// detection, bytecode.
    fn finish(
        dir: &Path,
        mut engine: regorus::Engine,
        revision: String,
        files: Vec<String>,
        options: EngineOptions,
    ) -> Result<PolicyEngine, PolicyError> {
        set_time_limit(&mut engine, options.eval_time_limit);
        let has_mask = engine
            .get_packages()
            .map_err(|e| PolicyError::Compile {
                dir: dir.to_owned(),
                message: describe(&e),
            })?
            .iter()
            .any(|p| p == MASK_PACKAGE);
        let compiled = match Compiled::new(&engine, has_mask, timer_config(options.eval_time_limit))
        {
            Ok(c) => Some(c),
            Err(reason) => {
                tracing::warn!(dir = %dir.display(), reason = %reason, "policy set cannot be compiled to bytecode; evaluating on the interpreter");
                None
            }
        };

        tracing::debug!(revision = %revision, files = files.len(), "policies loaded");

        Ok(PolicyEngine {
            engine,
            compiled,
            revision,
            dir: dir.to_owned(),
            files,
            has_mask,
            options,
        })
    }

    /// Replaces the wall-clock budget of one evaluation
    /// ([`DEFAULT_EVAL_TIME_LIMIT`] by default).
    pub fn with_eval_time_limit(mut self, limit: Duration) -> PolicyEngine {
        set_time_limit(&mut self.engine, limit);
        if let Some(c) = &mut self.compiled {
            c.set_timer(timer_config(limit));
        }
        self.options.eval_time_limit = limit;
        self
    }

    /// The first 12 hex digits of a SHA-256 over the sorted file names and
    /// contents of the loaded policy set; stamped on every decision.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The directory the set was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names of the loaded policy files, sorted.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Evaluates `data.mcp.decision` for `input`.
    ///
    /// Fails closed: an evaluation error (including running out of time), an
    /// undefined decision or one of the wrong shape yields a denial with the
    /// reason `policy evaluation failed`, and the cause is logged: its policy
    /// location at error level, the full message (which may quote input
    /// values such as argv) at debug level only.
    pub fn decide(&self, input: &PolicyInput) -> Decision {
        self.evaluate(input).decision
    }

    /// [`PolicyEngine::decide`] with everything the decision log and the
    /// policy tools need: typed obligations, the log mask, the latency.
    pub fn evaluate(&self, input: &PolicyInput) -> Evaluated {
        let started = Instant::now();
        let limits = self.options.input_limits;
        // Only MCP tool arguments are free-form; the rest has a fixed depth.
        if let Some(tool) = &input.request.mcp_tool
            && depth_exceeds(&tool.arguments, limits.max_depth.saturating_sub(3))
        {
            return self.bounded(started, too_deep(limits));
        }
        // Straight into the value the policy reads, without a JSON text or
        // tree in between.
        match crate::rego_value::to_rego(input) {
            Ok(value) => self.evaluate_value(value, started),
            Err(e) => self.failed(started, DecisionError::Input(e.to_string())),
        }
    }

    /// Evaluates a raw input document, as stored in the decision log or
    /// written by a policy author; it need not have the shape of
    /// [`PolicyInput`] (the policy decides what to make of it). Bounded like
    /// [`PolicyEngine::evaluate`].
    pub fn evaluate_json(&self, input: &serde_json::Value) -> Evaluated {
        let started = Instant::now();
        let limits = self.options.input_limits;
        if depth_exceeds(input, limits.max_depth) {
            return self.bounded(started, too_deep(limits));
        }
        match crate::rego_value::to_rego(input) {
            Ok(value) => self.evaluate_value(value, started),
            Err(e) => self.failed(started, DecisionError::Input(e.to_string())),
        }
    }

    /// Evaluates `input` like [`PolicyEngine::evaluate_json`] and also
    /// reports which rules were defined, the `print()` output and the lines
    /// evaluated.
    pub fn explain(&self, input: &serde_json::Value) -> Explanation {
        let evaluated = self.evaluate_json(input);
        let mut engine = self.engine.clone();
        engine.set_enable_coverage(true);
        let mut rules = serde_json::Value::Null;
        let mut prints = Vec::new();
        let mut lines = Vec::new();
        if let Ok(value) = regorus::Value::from_json_str(&input.to_string()) {
            engine.set_input(value);
            // The whole package: every rule defined for this input.
            if let Ok(results) = engine.eval_query("data.mcp".to_owned(), false)
                && let Some(v) = results
                    .result
                    .first()
                    .and_then(|r| r.expressions.first())
                    .map(|e| &e.value)
            {
                rules = to_json(v).unwrap_or(serde_json::Value::Null);
            }
            prints = engine.take_prints().unwrap_or_default();
            if let Ok(report) = engine.get_coverage_report() {
                for file in report.files {
                    lines.push((file.path, file.covered.into_iter().collect()));
                }
            }
        }
        Explanation {
            evaluated,
            rules,
            prints,
            lines,
        }
    }

    /// The value of one rule of package `mcp` (`"approve"` for
    /// `data.mcp.approve`) for `input`, on the interpreter under the same
    /// input bounds and execution timer as decisions. `Ok(None)` when the
    /// rule is undefined for this input or not written at all. An error
    /// names the policy location only, never input values.
    pub fn eval_rule(
        &self,
        rule: &str,
        input: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, String> {
        let limits = self.options.input_limits;
        if depth_exceeds(input, limits.max_depth) {
            return Err(too_deep(limits));
        }
        let value = crate::rego_value::to_rego(input)
            .map_err(|_| "input document cannot be encoded".to_owned())?;
        if let Some(len) = encoded_len_over(&value, limits.max_bytes) {
            return Err(format!(
                "input document is {len} bytes, over the limit of {}",
                limits.max_bytes
            ));
        }
        let mut engine = self.engine.clone();
        engine.set_input(value);
        let path = format!("data.mcp.{rule}");
        match engine.eval_rule(path.clone()) {
            Ok(regorus::Value::Undefined) => Ok(None),
            Ok(v) => to_json(&v)
                .map(Some)
                .map_err(|_| format!("{path} cannot be decoded")),
            Err(e) => match interpreter_error(&e) {
                DecisionError::Undefined => Ok(None),
                DecisionError::Conflict(m) => Err(format!(
                    "evaluation of {path} failed: eval_conflict_error: {}",
                    crate::error::short_locations(&m)
                )),
                other => Err(format!(
                    "evaluation of {path} failed at {}",
                    crate::error::eval_location(&other.to_string())
                )),
            },
        }
    }

    /// Bounds `input` by size and evaluates it.
    fn evaluate_value(&self, input: regorus::Value, started: Instant) -> Evaluated {
        let max = self.options.input_limits.max_bytes;
        if let Some(len) = encoded_len_over(&input, max) {
            return self.bounded(
                started,
                format!("input document is {len} bytes, over the limit of {max}"),
            );
        }
        let run = match &self.compiled {
            Some(compiled) => compiled.run(input),
            None => self.interpret(input),
        };
        self.finished(started, run.and_then(|run| self.decode(run)))
    }

    /// The outcome of an evaluation that ran (or failed) as [`Evaluated`].
    fn finished(
        &self,
        started: Instant,
        result: Result<(Decoded, Vec<String>), DecisionError>,
    ) -> Evaluated {
        match result {
            Ok((decoded, mask)) => Evaluated {
                decision: decoded.decision,
                obligations: decoded.obligations,
                mask,
                revision: self.revision.clone(),
                latency: started.elapsed(),
                shadow: None,
                failure: None,
            },
            Err(err) => self.failed(started, err),
        }
    }

    /// The decision and mask pointers of a run, on the VM or the interpreter.
    fn decode(&self, run: Run) -> Result<(Decoded, Vec<String>), DecisionError> {
        if run.decision == regorus::Value::Undefined {
            return Err(DecisionError::Undefined);
        }
        let value = to_json(&run.decision)?;
        let decoded = decision::from_value(&value, &self.revision, &self.options.enforced)?;
        let mask = match run.mask {
            Some(result) => self.mask(result),
            None => Vec::new(),
        };
        Ok((decoded, mask))
    }

    /// [`Compiled::run`] on the interpreter, for a set the VM compiler does
    /// not accept (and for comparing both in tests).
    fn interpret(&self, input: regorus::Value) -> Result<Run, DecisionError> {
        // Cheap: the clone shares the compiled policy (an Arc) and copies
        // only per-evaluation state, so concurrent requests never contend.
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let decision = engine
            .eval_rule(DECISION_RULE.to_owned())
            .map_err(|e| interpreter_error(&e))?;
        let mask = self.has_mask.then(|| {
            engine
                .eval_rule(MASK_RULE.to_owned())
                .map_err(|e| describe(&e))
        });
        Ok(Run { decision, mask })
    }

    /// Evaluates `input` on the interpreter only; tests compare it with the
    /// bytecode VM.
    #[doc(hidden)]
    pub fn evaluate_json_interpreted(&self, input: &serde_json::Value) -> Evaluated {
        let started = Instant::now();
        let result = crate::rego_value::to_rego(input)
            .map_err(|e| DecisionError::Input(e.to_string()))
            .and_then(|input| self.interpret(input))
            .and_then(|run| self.decode(run));
        self.finished(started, result)
    }

    /// Whether requests are evaluated on the bytecode VM (`false`: on the
    /// interpreter, because the VM compiler did not accept the set).
    pub fn compiled(&self) -> bool {
        self.compiled.is_some()
    }

    /// Turns the value of [`MASK_RULE`] into pointers. A failure masks the
    /// whole input: the log must never keep more than intended.
    fn mask(&self, result: Result<regorus::Value, String>) -> Vec<String> {
        let whole = || vec![String::new()];
        let value = match result {
            Ok(regorus::Value::Undefined) => return Vec::new(),
            Ok(v) => v,
            Err(e) if e == NO_SUCH_RULE => return Vec::new(),
            Err(e) => {
                tracing::warn!(error = %DecisionError::Eval(e).redacted(), revision = %self.revision, "data.mcp.log.mask failed; masking the whole input");
                return whole();
            }
        };
        match to_json(&value).map(|v| {
            v.as_array().and_then(|items| {
                items
                    .iter()
                    .map(|p| p.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
        }) {
            Ok(Some(pointers)) => pointers,
            _ => {
                tracing::warn!(revision = %self.revision, "data.mcp.log.mask is not a set of strings; masking the whole input");
                whole()
            }
        }
    }

    fn failed(&self, started: Instant, err: DecisionError) -> Evaluated {
        let kind = err.kind();
        tracing::error!(
            error = %err.redacted(),
            kind = %kind,
            revision = %self.revision,
            "policy evaluation failed, denying"
        );
        // The full message may quote input values (argv), so it only goes
        // out at debug level.
        tracing::debug!(error = %err, revision = %self.revision, "policy evaluation error detail");
        // A conflict's message names rules and places only, so the client
        // and the decision log get it: "two rules disagree" must be visible
        // as such, never look like "no rule applies".
        let reason = match kind {
            FailureKind::Conflict => format!("{EVAL_FAILED}: {}", err.redacted()),
            _ => EVAL_FAILED.to_owned(),
        };
        Evaluated {
            decision: Decision::fail_closed(reason, self.revision.clone()),
            obligations: ObligationSet::default(),
            mask: vec![String::new()],
            revision: self.revision.clone(),
            latency: started.elapsed(),
            shadow: None,
            failure: Some(Failure {
                kind,
                detail: err.to_string(),
            }),
        }
    }

    /// A denial for an input past [`InputLimits`]; the reason quotes sizes
    /// only, so it is safe to show the client.
    fn bounded(&self, started: Instant, reason: String) -> Evaluated {
        tracing::warn!(reason = %reason, revision = %self.revision, "input document refused before evaluation");
        Evaluated {
            decision: Decision::fail_closed(reason.clone(), self.revision.clone()),
            obligations: ObligationSet::default(),
            mask: vec![String::new()],
            revision: self.revision.clone(),
            latency: started.elapsed(),
            shadow: None,
            failure: Some(Failure {
                kind: FailureKind::Input,
                detail: reason,
            }),
        }
    }
}

/// An interpreter error as the engine reports it. regorus' interpreter has
/// no typed errors: conflicts are told by their messages (OPA's wording and
/// regorus' own), time-outs by their [`regorus::LimitError`].
pub(crate) fn interpreter_error<E>(e: &E) -> DecisionError
where
    E: fmt::Display + AsRef<dyn std::error::Error + Send + Sync>,
{
    let message = describe(e);
    if message == NO_SUCH_RULE {
        // regorus' answer when no rule of that path exists at all.
        return DecisionError::Undefined;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(c) = cause {
        if c.downcast_ref::<regorus::LimitError>().is_some() {
            return DecisionError::Timeout(message);
        }
        cause = c.source();
    }
    const CONFLICTS: [&str; 4] = [
        "multiple outputs",
        "object keys must be unique",
        "rule conflicts with rule",
        "generated multiple times",
    ];
    if CONFLICTS.iter().any(|c| message.contains(c)) {
        return DecisionError::Conflict(conflict_summary(&message));
    }
    DecisionError::Eval(message)
}

/// An interpreter conflict in the VM's words: what conflicted, the rule
/// (its name as written in the policy) and both places. Built from the
/// policy's text and locations only: the interpreter's own message may quote
/// values, which may come from the input.
fn conflict_summary(message: &str) -> String {
    let what = if message.contains("keys must be unique") || message.contains("multiple times") {
        "object keys must be unique"
    } else if message.contains("function") {
        "functions must not produce multiple outputs for same inputs"
    } else {
        "complete rules must not produce multiple outputs"
    };
    let at = crate::error::eval_location(message);
    let mut places = vec![at.to_owned()];
    if let Some(other) = message
        .split("conflicts with rule at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
    {
        places.push(other.to_owned());
    }
    // The excerpt regorus prints under the location: `LINE | text`.
    let line = at.rsplit(':').nth(1).unwrap_or_default();
    let rule: String = message
        .lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(line)?
                .trim_start()
                .strip_prefix('|')
        })
        .map(str::trim_start)
        .unwrap_or_default()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    let rule = if rule.is_empty() {
        String::new()
    } else {
        format!(" rule {rule}")
    };
    format!("{what}:{rule} ({})", places.join(", "))
}

fn too_deep(limits: InputLimits) -> String {
    format!(
        "input document nests deeper than {} levels",
        limits.max_depth
    )
}

/// Whether `v` nests arrays/objects deeper than `max`, without recursing
/// further than `max + 1` levels (so a hostile document cannot blow the
/// stack here either).
pub(crate) fn depth_exceeds(v: &serde_json::Value, max: usize) -> bool {
    let mut stack: Vec<(&serde_json::Value, usize)> = vec![(v, 1)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth > max {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

fn to_json(value: &regorus::Value) -> Result<serde_json::Value, DecisionError> {
    serde_json::to_value(value).map_err(|e| DecisionError::Decode(e.to_string()))
}

/// The length of `value` encoded as compact JSON (escapes aside) when it
/// is over `max` bytes; `None` when within. Walks the tree without printing
/// it, and stops once past `max`.
fn encoded_len_over(value: &regorus::Value, max: usize) -> Option<usize> {
    use regorus::Value;
    fn digits(mut n: u64) -> usize {
        let mut d = 1;
        while n >= 10 {
            n /= 10;
            d += 1;
        }
        d
    }
    let mut len = 0usize;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        len += match v {
            Value::Null | Value::Undefined => 4,
            Value::Bool(b) => 4 + usize::from(!b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => digits(u),
                (None, Some(i)) => 1 + digits(i.unsigned_abs()),
                // Floats: the longest shortest-round-trip form.
                (None, None) => 24,
            },
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                let before = stack.len();
                stack.extend(items.iter());
                // Brackets and commas.
                2 + (stack.len() - before).saturating_sub(1)
            }
            Value::Set(items) => {
                stack.extend(items.iter());
                2 + items.len().saturating_sub(1)
            }
            Value::Object(map) => {
                // Braces, commas and colons; keys are counted as values.
                stack.extend(map.iter().flat_map(|(k, v)| [k, v]));
                2 + 2 * map.len().saturating_sub(1) + 1
            }
        };
        if len > max {
            return Some(len);
        }
    }
    None
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

fn read_file(path: &Path) -> Result<(PathBuf, String), PolicyError> {
    std::fs::read_to_string(path)
        .map(|text| (path.to_owned(), text))
        .map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Parses and analyses the sources once and returns the prepared engine that
/// every evaluation clones.
pub(crate) fn prepare(
    dir: &Path,
    sources: &[SourceFile],
    data: Option<&(PathBuf, String)>,
) -> Result<regorus::Engine, PolicyError> {
    let docs: Vec<DataDoc<'_>> = data
        .map(|(path, text)| DataDoc {
            path: path.clone(),
            text,
            at: Vec::new(),
        })
        .into_iter()
        .collect();
    prepare_docs(dir, sources, &docs)
}

/// One data document and where under `data` it is mounted.
pub(crate) struct DataDoc<'a> {
    pub path: PathBuf,
    pub text: &'a str,
    pub at: Vec<String>,
}

/// [`prepare`] with any number of data documents (a bundle's nested
/// `data.json` files), merged into `data`.
pub(crate) fn prepare_docs(
    dir: &Path,
    sources: &[SourceFile],
    docs: &[DataDoc<'_>],
) -> Result<regorus::Engine, PolicyError> {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(false);
    set_time_limit(&mut engine, DEFAULT_EVAL_TIME_LIMIT);
    // print() output is kept per evaluation (and shown by `policy eval
    // --explain`), never written to the gateway's stdout or stderr, where
    // it could leak input values.
    engine.set_gather_prints(true);

    for src in sources {
        engine
            .add_policy(src.path.display().to_string(), src.text.clone())
            .map_err(|e| PolicyError::Parse {
                path: src.path.clone(),
                message: describe(&e),
            })?;
    }
    for DataDoc { path, text, at } in docs {
        let mut value = regorus::Value::from_json_str(text).map_err(|e| PolicyError::Data {
            path: path.clone(),
            message: describe(&e),
        })?;
        for key in at.iter().rev() {
            let mut object = regorus::Value::new_object();
            if let Ok(map) = object.as_object_mut() {
                map.insert(regorus::Value::from(key.as_str()), value);
            }
            value = object;
        }
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
    engine.set_execution_timer_config(timer_config(limit));
}

fn timer_config(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
    }
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
