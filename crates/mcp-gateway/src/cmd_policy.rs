//! `mcp-gateway policy …`: the policy author's tools. Test, evaluate, check
//! and replay a policy directory offline, and export the decision log.
//!
//! Everything here runs without a gateway: it reads the policy directory and,
//! for `replay` and `log export`, the gateway's database. A failing test, a
//! broken policy or a changed outcome is an exit code, not an error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use mcp_policy::{
    EngineOptions, FailureKind, MASKED, PolicyEngine, PolicyError, PolicyInput, TestOptions,
    TestReport,
};
use mcp_store::{DecisionLogEntry, DecisionQuery, StoreError, TaskStore};
use serde_json::json;
use thiserror::Error;
use time::OffsetDateTime;

/// The policy directory when none is given.
const DEFAULT_DIR: &str = "policies";

/// How many changed requests `replay` shows per kind of change.
const DEFAULT_EXAMPLES: usize = 5;

/// Decision-log entries read per database round trip.
const PAGE: u32 = 1_000;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run every test_* rule of the *_test.rego files, with line coverage.
    Test(TestArgs),
    /// Evaluate data.mcp.decision for an input document.
    Eval(EvalArgs),
    /// Parse and compile a policy directory; print every error as file:line:col.
    Check {
        /// The policy directory.
        #[arg(default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Re-decide stored requests with a candidate policy set and report what changes.
    Replay(ReplayArgs),
    /// Pack a policy directory into an OPA-style bundle (.tar.gz), optionally signed.
    Build(BuildArgs),
    /// The decision log.
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The policy directory.
    #[arg(default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Fail when line coverage of the policies is below this percentage.
    #[arg(long, value_name = "PCT")]
    threshold: Option<f64>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Only run tests whose name (data.<package>.<rule>) matches this regex.
    #[arg(short = 'r', long = "run", value_name = "REGEX")]
    run: Option<String>,
    /// Print each file's uncovered lines.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The input document (JSON); `-` reads standard input.
    #[arg(long, short)]
    input: PathBuf,
    /// The policy directory.
    #[arg(long, short, default_value = DEFAULT_DIR)]
    policies: PathBuf,
    /// A data document to use instead of the directory's data.json.
    #[arg(long, short)]
    data: Option<PathBuf>,
    /// Also show the rules that were defined, print() output and evaluated lines.
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The policy directory; it must compile and its tests must pass.
    #[arg(default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// The bundle to write.
    #[arg(long, short)]
    output: PathBuf,
    /// The revision recorded in the manifest (e.g. a git commit); the
    /// gateway reports REVISION+<content hash>.
    #[arg(long, default_value = "")]
    revision: String,
    /// Sign the bundle with this Ed25519 private key (PKCS#8 PEM, as written
    /// by `openssl genpkey -algorithm ed25519`).
    #[arg(long, value_name = "KEY")]
    signing_key: Option<PathBuf>,
}

/// Where the gateway's database is.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store URL, e.g. sqlite:///var/lib/mcp-gateway/gateway.db.
    #[arg(long, env = "MCP_GATEWAY_DATABASE_URL", conflicts_with = "data_dir")]
    database: Option<String>,
    /// The gateway's data directory; the database is DIR/gateway.db.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
}

impl StoreArgs {
    fn url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("gateway.db").display()))
    }
}

/// Which stored decisions to read.
#[derive(Debug, Args)]
pub struct Selection {
    /// Only decisions of the last DURATION (e.g. 30m, 24h, 7d).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Only this tenant's decisions.
    #[arg(long)]
    tenant: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The candidate policy directory.
    #[arg(long)]
    candidate: PathBuf,
    #[command(flatten)]
    selection: Selection,
    /// Examples shown per kind of change.
    #[arg(long, default_value_t = DEFAULT_EXAMPLES)]
    examples: usize,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Exit with status 1 when any outcome changes (for CI).
    #[arg(long)]
    fail_on_change: bool,
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Print stored decisions as JSON lines, oldest first.
    Export(Selection),
}

/// Why a policy command could not do its job (as opposed to finding test
/// failures or policy errors, which are exit codes).
#[derive(Debug, Error)]
pub enum PolicyCliError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cannot open the decision log")]
    Store(#[from] StoreError),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not JSON: {message}")]
    InputJson { path: PathBuf, message: String },
    #[error("--since {0:?} reaches before the epoch")]
    Since(Duration),
    #[error("cannot write the export")]
    Write(#[source] std::io::Error),
}

/// Prints a line to stdout. A closed pipe (`| head`) is not worth a panic
/// or an error: the reader has what it wanted.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Runs one `policy` subcommand and returns the process exit code.
pub async fn run(cmd: PolicyCommand) -> Result<ExitCode, PolicyCliError> {
    match cmd {
        PolicyCommand::Test(args) => test(&args),
        PolicyCommand::Eval(args) => eval(&args),
        PolicyCommand::Check { dir } => Ok(check(&dir)),
        PolicyCommand::Replay(args) => replay(&args).await,
        PolicyCommand::Build(args) => build(&args),
        PolicyCommand::Log(LogCommand::Export(sel)) => export(&sel).await,
    }
}

/// The bundle verification key configured by `policy.bundle_public_key`.
pub fn bundle_key(path: Option<&Path>) -> Result<Option<mcp_policy::BundleKey>, PolicyError> {
    path.map(mcp_policy::read_verifying_key).transpose()
}

fn build(args: &BuildArgs) -> Result<ExitCode, PolicyCliError> {
    let key = match &args.signing_key {
        Some(path) => Some(mcp_policy::read_signing_key(path)?),
        None => None,
    };
    let built = mcp_policy::build_bundle(&args.dir, &args.output, &args.revision, key.as_ref())?;
    let engine = PolicyEngine::load(&args.output)?;
    out!(
        "wrote {} ({} files, {} bytes, {}), revision {}",
        args.output.display(),
        built.files.len(),
        built.bytes,
        if built.signed { "signed" } else { "unsigned" },
        engine.revision()
    );
    Ok(ExitCode::SUCCESS)
}

fn test(args: &TestArgs) -> Result<ExitCode, PolicyCliError> {
    let report = PolicyEngine::run_tests_with(
        &args.dir,
        &TestOptions {
            filter: args.run.clone(),
            coverage: true,
        },
    )?;
    let coverage = report.coverage.as_ref().map_or(100.0, |c| c.percent());
    let below = args.threshold.is_some_and(|t| coverage < t);
    match args.format {
        Format::Json => out!(
            "{}",
            json!({
                "passed": report.passed(),
                "failed": report.failed(),
                "coverage": coverage,
                "threshold": args.threshold,
                "tests": report.outcomes,
                "files": report.coverage.as_ref().map(|c| &c.files),
            })
        ),
        Format::Text => print_tests(&report, args, coverage),
    }
    if below && args.format == Format::Text {
        eprintln!(
            "coverage {coverage:.1}% is below the threshold of {:.1}%",
            args.threshold.unwrap_or_default()
        );
    }
    Ok(
        if report.failed() > 0 || below || report.outcomes.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn print_tests(report: &TestReport, args: &TestArgs, coverage: f64) {
    for o in &report.outcomes {
        let status = if o.passed { "PASS" } else { "FAIL" };
        out!(
            "{status} data.{}.{} ({:.2}ms)",
            o.package,
            o.name,
            o.duration.as_secs_f64() * 1e3
        );
        if let Some(err) = &o.error {
            for line in err.lines() {
                out!("    {line}");
            }
        }
    }
    if let Some(c) = &report.coverage {
        out!();
        for f in &c.files {
            out!("{:6.1}%  {}", f.percent(), f.path);
            if args.verbose && !f.not_covered.is_empty() {
                let lines: Vec<String> = f.not_covered.iter().map(u32::to_string).collect();
                out!("         not covered: {}", lines.join(", "));
            }
        }
    }
    out!(
        "\n{} passed, {} failed; coverage {coverage:.1}%",
        report.passed(),
        report.failed()
    );
}

fn eval(args: &EvalArgs) -> Result<ExitCode, PolicyCliError> {
    let text = if args.input == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&args.input)
    }
    .map_err(|source| PolicyCliError::Read {
        path: args.input.clone(),
        source,
    })?;
    let input: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PolicyCliError::InputJson {
            path: args.input.clone(),
            message: e.to_string(),
        })?;
    // Authors often write inputs by hand: say where it departs from the
    // documented shape, but evaluate it all the same.
    if let Err(e) = serde_json::from_value::<PolicyInput>(input.clone()) {
        eprintln!(
            "warning: {} does not match input document v{} ({e}); see docs/policy/input.md",
            args.input.display(),
            mcp_policy::INPUT_VERSION
        );
    }
    // Show every obligation as the policy set it, rather than the denial
    // this gateway would turn an unenforced one into.
    let options = EngineOptions {
        data_file: args.data.clone(),
        enforced: mcp_policy::ObligationKind::ALL.into_iter().collect(),
        ..EngineOptions::default()
    };
    let engine = PolicyEngine::load_with(&args.policies, options)?;
    let explanation = args.explain.then(|| engine.explain(&input));
    let evaluated = match &explanation {
        Some(x) => x.evaluated.clone(),
        None => engine.evaluate_json(&input),
    };
    let d = &evaluated.decision;
    let mut out = json!({
        "allow": d.allow,
        "deny_reasons": d.deny_reasons,
        "warnings": d.warnings,
        "obligations": evaluated.obligations,
        "revision": evaluated.revision,
        "latency_us": u64::try_from(evaluated.latency.as_micros()).unwrap_or(u64::MAX),
    });
    // Like `opa eval`: an evaluation that could not be computed (a conflict
    // between rules, a builtin error, a time-out) is an error and a
    // non-zero exit, even though the gateway would answer it with a denial.
    let mut code = ExitCode::SUCCESS;
    if let Some(why) = &evaluated.failure {
        out["error"] = json!({"kind": why.kind.as_str(), "message": why.detail});
        if matches!(
            why.kind,
            FailureKind::Conflict | FailureKind::Error | FailureKind::Timeout
        ) {
            code = ExitCode::from(2);
        }
    }
    if let Some(x) = explanation {
        out["explain"] = json!({
            "rules": x.rules,
            "prints": x.prints,
            "lines": x.lines.into_iter().map(|(file, lines)| json!({"file": file, "lines": ranges(&lines)})).collect::<Vec<_>>(),
        });
    }
    out!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(code)
}

/// `1,2,3,5,7,8` → `1-3,5,7-8`.
fn ranges(lines: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = lines[i];
        let mut end = start;
        while i + 1 < lines.len() && lines[i + 1] == end + 1 {
            i += 1;
            end = lines[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

fn check(dir: &Path) -> ExitCode {
    let found = mcp_policy::check(dir);
    for d in &found {
        out!("{d}");
    }
    // Warnings (rules that may conflict) do not fail the check: whether
    // both definitions can apply at once is often more than a lint can tell.
    if found.is_empty() {
        for w in mcp_policy::lint(dir) {
            out!("{w}");
        }
    }
    if found.is_empty() {
        match PolicyEngine::load(dir) {
            Ok(engine) => {
                out!(
                    "{}: ok, revision {} ({} files)",
                    dir.display(),
                    engine.revision(),
                    engine.files().len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                out!("{}", mcp_policy::Diagnostic::from_error(dir, &e));
                ExitCode::FAILURE
            }
        }
    } else {
        eprintln!("{} problem(s) in {}", found.len(), dir.display());
        ExitCode::FAILURE
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30m, 24h or 7d: {e}"))
}

fn query(sel: &Selection, with_input: bool) -> Result<DecisionQuery, PolicyCliError> {
    let since = sel
        .since
        .map(|d| {
            time::Duration::try_from(d)
                .ok()
                .and_then(|d| OffsetDateTime::now_utc().checked_sub(d))
                .ok_or(PolicyCliError::Since(d))
        })
        .transpose()?;
    Ok(DecisionQuery {
        since,
        tenant: sel.tenant.clone(),
        with_input,
        after: None,
        limit: PAGE,
    })
}

/// Calls `each` on every decision-log entry `query` selects, page by page.
async fn for_each_entry(
    store: &dyn TaskStore,
    mut query: DecisionQuery,
    mut each: impl FnMut(DecisionLogEntry),
) -> Result<(), PolicyCliError> {
    loop {
        let page = store.list_decisions(&query).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        query.after = Some((last.record.at, last.record.id));
        let full = page.len() >= PAGE as usize;
        page.into_iter().for_each(&mut each);
        if !full {
            return Ok(());
        }
    }
}

/// What changed for one kind of change: how often, and a few examples.
#[derive(Debug, Default)]
pub struct Change {
    pub count: u64,
    pub examples: Vec<serde_json::Value>,
}

impl Change {
    fn add(&mut self, max: usize, example: impl FnOnce() -> serde_json::Value) {
        self.count += 1;
        if self.examples.len() < max {
            self.examples.push(example());
        }
    }
}

/// The outcome of `policy replay`.
#[derive(Debug, Default)]
pub struct ReplaySummary {
    pub candidate_revision: String,
    /// Stored decisions with an input, re-decided.
    pub replayed: u64,
    pub unchanged: u64,
    /// Inputs that carry masked values, whose replay may differ for that
    /// reason alone.
    pub with_masked_values: u64,
    pub allow_to_deny: Change,
    pub deny_to_allow: Change,
    /// Allowed both times, in another sandbox profile.
    pub profile_changed: Change,
}

impl ReplaySummary {
    pub fn changed(&self) -> u64 {
        self.allow_to_deny.count + self.deny_to_allow.count + self.profile_changed.count
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "candidate_revision": self.candidate_revision,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "with_masked_values": self.with_masked_values,
            "allow_to_deny": {"count": self.allow_to_deny.count, "examples": self.allow_to_deny.examples},
            "deny_to_allow": {"count": self.deny_to_allow.count, "examples": self.deny_to_allow.examples},
            "profile_changed": {"count": self.profile_changed.count, "examples": self.profile_changed.examples},
        })
    }
}

/// Re-decides every stored input `query` selects with the policy set in
/// `candidate` and sorts the results by change.
pub async fn replay_store(
    candidate: &Path,
    store: &dyn TaskStore,
    query: DecisionQuery,
    examples: usize,
) -> Result<ReplaySummary, PolicyCliError> {
    // Replay compares what the policies say; which obligations this build
    // enforces is not the question.
    let options = EngineOptions {
        enforced: mcp_policy::ObligationKind::ALL.into_iter().collect(),
        ..EngineOptions::default()
    };
    let engine = PolicyEngine::load_with(candidate, options)?;
    let mut sum = ReplaySummary {
        candidate_revision: engine.revision().to_owned(),
        ..ReplaySummary::default()
    };
    for_each_entry(store, query, |entry| {
        let Some(input) = &entry.details.input else {
            return;
        };
        sum.replayed += 1;
        if input.to_string().contains(MASKED) {
            sum.with_masked_values += 1;
        }
        let now = engine.evaluate_json(input);
        let rec = &entry.record;
        let example = |what: &str| {
            json!({
                "decision_id": rec.id,
                "at": mcp_core::rfc3339(rec.at),
                "tenant": rec.tenant,
                "principal": rec.principal,
                "kind": rec.kind,
                "summary": rec.summary,
                "stored": {"allow": rec.allow, "deny_reasons": rec.deny_reasons, "profile": entry.details.profile, "revision": rec.policy_revision},
                "candidate": {"allow": now.decision.allow, "deny_reasons": now.decision.deny_reasons, "profile": now.obligations.profile},
                "change": what,
            })
        };
        match (rec.allow, now.decision.allow) {
            (true, false) => sum.allow_to_deny.add(examples, || example("allow→deny")),
            (false, true) => sum.deny_to_allow.add(examples, || example("deny→allow")),
            (true, true) if entry.details.profile != now.obligations.profile => {
                sum.profile_changed.add(examples, || example("profile"));
            }
            _ => sum.unchanged += 1,
        }
    })
    .await?;
    Ok(sum)
}

async fn replay(args: &ReplayArgs) -> Result<ExitCode, PolicyCliError> {
    let store = mcp_store::open_store(&args.selection.store.url()).await?;
    let query = query(&args.selection, true)?;
    let sum = replay_store(&args.candidate, store.as_ref(), query, args.examples).await?;
    match args.format {
        Format::Json => out!("{}", sum.to_json()),
        Format::Text => {
            out!(
                "replayed {} stored decision(s) against candidate revision {}",
                sum.replayed,
                sum.candidate_revision
            );
            out!("  unchanged      {}", sum.unchanged);
            for (name, c) in [
                ("allow → deny", &sum.allow_to_deny),
                ("deny → allow", &sum.deny_to_allow),
                ("profile change", &sum.profile_changed),
            ] {
                out!("  {name:<14} {}", c.count);
                for e in &c.examples {
                    out!(
                        "    {} {} {}/{} {:?}: {} → {}",
                        e["at"].as_str().unwrap_or_default(),
                        e["decision_id"].as_str().unwrap_or_default(),
                        e["tenant"].as_str().unwrap_or_default(),
                        e["principal"].as_str().unwrap_or_default(),
                        e["summary"].as_str().unwrap_or_default(),
                        e["stored"],
                        e["candidate"],
                    );
                }
            }
            if sum.with_masked_values > 0 {
                out!(
                    "  note: {} input(s) carry masked values ({MASKED}); their replay may differ from the live decision",
                    sum.with_masked_values
                );
            }
        }
    }
    Ok(if args.fail_on_change && sum.changed() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn export(sel: &Selection) -> Result<ExitCode, PolicyCliError> {
    let store = mcp_store::open_store(&sel.store.url()).await?;
    let query = query(sel, false)?;
    let stdout = std::io::stdout().lock();
    match export_lines(store.as_ref(), query, std::io::LineWriter::new(stdout)).await {
        // A closed pipe (`| head`) ends the export; it is not a failure.
        Err(PolicyCliError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
        Ok(_) => Ok(ExitCode::SUCCESS),
    }
}

/// Writes the decision-log entries `query` selects to `out` as JSON lines,
/// oldest first; returns how many.
pub async fn export_lines(
    store: &dyn TaskStore,
    query: DecisionQuery,
    mut out: impl std::io::Write,
) -> Result<u64, PolicyCliError> {
    let mut failed = None;
    let mut count = 0u64;
    for_each_entry(store, query, |entry| {
        if failed.is_some() {
            return;
        }
        let (rec, d) = (&entry.record, &entry.details);
        let line = json!({
            "decision_id": rec.id,
            "time": mcp_core::rfc3339(rec.at),
            "tenant": rec.tenant,
            "principal": rec.principal,
            "kind": rec.kind,
            "summary": rec.summary,
            "revision": rec.policy_revision,
            "result": {
                "allow": rec.allow,
                "deny_reasons": rec.deny_reasons,
                "warnings": d.warnings,
                "obligations": d.obligations,
            },
            "profile": d.profile,
            "latency_us": d.latency_us,
            "task_id": rec.task_id.map(|t| t.to_string()),
            "input": d.input,
        });
        match writeln!(out, "{line}") {
            Ok(()) => count += 1,
            Err(e) => failed = Some(e),
        }
    })
    .await?;
    match failed {
        Some(e) => Err(PolicyCliError::Write(e)),
        None => Ok(count),
    }
}

#[cfg(test)]
mod tests;
