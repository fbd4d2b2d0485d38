//! `policy check`: every problem of a policy directory, each with its file,
//! line and column, instead of the first one only.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::{describe, prepare, read_data, read_sources};
use crate::error::PolicyError;

/// One problem found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based; 0 when the problem has no position (an unreadable file).
    pub line: u32,
    pub col: u32,
    /// The message, including regorus' excerpt of the offending line.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Parses every `*.rego` of `dir` (tests included) on its own, so that each
/// broken file is reported, checks `data.json`, and when everything parses
/// compiles the whole set. An empty result means the directory is good.
///
/// regorus stops at the first error of a file and of an analysis, so a file
/// shows at most one parse error; fix it and run again for the next.
pub fn check(dir: &Path) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let sources = match read_sources(dir, true) {
        Ok(s) => s,
        Err(e) => {
            out.push(from_error(dir, &e));
            return out;
        }
    };
    for src in &sources {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        if let Err(e) = engine.add_policy(src.path.display().to_string(), src.text.clone()) {
            out.push(located(&src.path, &describe(&e)));
        }
    }
    let data = match read_data(dir) {
        Ok(d) => d,
        Err(e) => {
            out.push(from_error(dir, &e));
            None
        }
    };
    if let Some((path, text)) = &data {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => out.push(Diagnostic {
                path: path.clone(),
                line: 1,
                col: 1,
                message: "data.json must hold a JSON object".to_owned(),
            }),
            Err(e) => out.push(Diagnostic {
                path: path.clone(),
                line: u32::try_from(e.line()).unwrap_or(0),
                col: u32::try_from(e.column()).unwrap_or(0),
                message: e.to_string(),
            }),
        }
    }
    if out.is_empty()
        && let Err(e) = prepare(dir, &sources, data.as_ref())
    {
        out.push(from_error(dir, &e));
    }
    out
}

impl Diagnostic {
    /// A diagnostic for a load error of `dir`, located where regorus says.
    pub fn from_error(dir: &Path, err: &PolicyError) -> Diagnostic {
        from_error(dir, err)
    }
}

fn from_error(dir: &Path, err: &PolicyError) -> Diagnostic {
    match err {
        PolicyError::Parse { path, message } => located(path, message),
        PolicyError::Compile { message, .. } => located(dir, message),
        PolicyError::Data { path, message } => located(path, message),
        PolicyError::Read { path, .. } | PolicyError::NonUtf8Name { path } => Diagnostic {
            path: path.clone(),
            line: 0,
            col: 0,
            message: error_chain(err),
        },
        other => Diagnostic {
            path: dir.to_owned(),
            line: 0,
            col: 0,
            message: error_chain(other),
        },
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

/// Finds regorus' `--> file:line:col` marker in `message`; without one the
/// diagnostic points at `fallback`.
fn located(fallback: &Path, message: &str) -> Diagnostic {
    let marker = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("-->"))
        .map(str::trim);
    if let Some(loc) = marker
        && let Some((rest, col)) = loc.rsplit_once(':')
        && let Some((file, line)) = rest.rsplit_once(':')
        && let (Ok(line), Ok(col)) = (line.parse(), col.parse())
    {
        return Diagnostic {
            path: PathBuf::from(file),
            line,
            col,
            message: message.to_owned(),
        };
    }
    Diagnostic {
        path: fallback.to_owned(),
        line: 0,
        col: 0,
        message: message.to_owned(),
    }
}
