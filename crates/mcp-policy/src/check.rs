//! `policy check`: every problem of a policy directory, each with its file,
//! line and column, instead of the first one only.

use std::fmt;
use std::path::{Path, PathBuf};

use regorus::unstable::{BoolOp, Expr, Literal, LiteralStmt, Rule, RuleHead};
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

/// Warnings about a policy directory that loads: pairs of complete rules of
/// one name (in one package) whose values are constants that differ and
/// whose conditions do not visibly exclude each other. When both apply to
/// one request the evaluation is a conflict (`eval_conflict_error`) and the
/// request is denied; the usual fix is a partial set (`approvals contains
/// …`, see policies/README.md) or exclusive conditions.
///
/// Static and conservative: it only judges constant heads (`x := "read"`,
/// `x := {"roles": ["ops"]}`), and counts two bodies as exclusive when one
/// has `E` and the other `not E`, or they compare the same expression with
/// `==` to different constants, or with `==` and `!=` to the same one. What
/// it cannot tell, it does not warn about; `policy test` catches the rest
/// at run time.
pub fn lint(dir: &Path) -> Vec<Diagnostic> {
    use std::collections::BTreeMap;

    let Ok(sources) = read_sources(dir, false) else {
        return Vec::new();
    };
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(false);
    for src in &sources {
        if engine
            .add_policy(src.path.display().to_string(), src.text.clone())
            .is_err()
        {
            return Vec::new();
        }
    }
    let mut heads: BTreeMap<(String, String), Vec<Head>> = BTreeMap::new();
    for module in engine.get_modules() {
        let package = module.package.refr.span().text().to_owned();
        for rule in &module.policy {
            let Rule::Spec {
                head:
                    RuleHead::Compr {
                        refr,
                        assign: Some(assign),
                        ..
                    },
                bodies,
                ..
            } = rule.as_ref()
            else {
                continue;
            };
            let Some(value) = constant(&assign.value) else {
                continue;
            };
            let span = refr.span();
            heads
                .entry((package.clone(), span.text().to_owned()))
                .or_default()
                .push(Head {
                    path: PathBuf::from(span.source.file().as_str()),
                    line: span.line,
                    col: span.col,
                    value,
                    conditions: bodies
                        .iter()
                        .filter(|b| !b.is_else)
                        .flat_map(|b| b.query.stmts.iter().map(condition))
                        .collect(),
                });
        }
    }
    let mut out = Vec::new();
    for ((package, name), defs) in &heads {
        for (i, a) in defs.iter().enumerate() {
            for b in defs.iter().skip(i + 1) {
                if a.value == b.value || exclusive(&a.conditions, &b.conditions) {
                    continue;
                }
                out.push(Diagnostic {
                    path: b.path.clone(),
                    line: b.line,
                    col: b.col,
                    message: format!(
                        "warning: rule data.{package}.{name} is also defined at {}:{}:{} with a different value; when both apply to one request the evaluation is a conflict and the request is denied: make their conditions exclusive or use a partial set (see policies/README.md, \"Extending the policies\")",
                        a.path.display(),
                        a.line,
                        a.col
                    ),
                });
            }
        }
    }
    out
}

/// One constant-valued definition of a complete rule.
struct Head {
    path: PathBuf,
    line: u32,
    col: u32,
    /// The value, as JSON when it is JSON, else its text without spaces.
    value: String,
    /// The literals of its body, as [`condition`] reads them.
    conditions: Vec<Condition>,
}

/// A body literal as far as exclusion goes.
#[derive(PartialEq)]
enum Condition {
    Holds(String),
    Not(String),
    Equals(String, String),
    Differs(String, String),
    Other,
}

fn condition(stmt: &LiteralStmt) -> Condition {
    match &stmt.literal {
        Literal::NotExpr { expr, .. } => Condition::Not(squeeze(expr.span().text())),
        Literal::Expr { expr, .. } => match expr.as_ref() {
            Expr::BoolExpr { op, lhs, rhs, .. } => {
                let (subject, value) = match (constant(lhs), constant(rhs)) {
                    (None, Some(v)) => (squeeze(lhs.span().text()), v),
                    (Some(v), None) => (squeeze(rhs.span().text()), v),
                    _ => return Condition::Holds(squeeze(expr.span().text())),
                };
                match op {
                    BoolOp::Eq => Condition::Equals(subject, value),
                    BoolOp::Ne => Condition::Differs(subject, value),
                    _ => Condition::Holds(squeeze(expr.span().text())),
                }
            }
            other => Condition::Holds(squeeze(other.span().text())),
        },
        _ => Condition::Other,
    }
}

/// Whether one of `a` and one of `b` cannot both hold.
fn exclusive(a: &[Condition], b: &[Condition]) -> bool {
    a.iter().any(|x| {
        b.iter().any(|y| match (x, y) {
            (Condition::Holds(e), Condition::Not(f)) | (Condition::Not(f), Condition::Holds(e)) => {
                e == f
            }
            (Condition::Equals(s, v), Condition::Equals(t, w)) => s == t && v != w,
            (Condition::Equals(s, v), Condition::Differs(t, w))
            | (Condition::Differs(t, w), Condition::Equals(s, v)) => s == t && v == w,
            _ => false,
        })
    })
}

/// The value of `expr` when it is built of literals only (scalars, and
/// arrays, sets and objects of them), in a canonical form for comparison
/// (built from the tree: a composite's span does not cover all of it).
fn constant(expr: &Expr) -> Option<String> {
    Some(match expr {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => serde_json::to_string(value).ok()?,
        Expr::Array { items, .. } => {
            let items: Option<Vec<String>> = items.iter().map(|i| constant(i)).collect();
            format!("[{}]", items?.join(","))
        }
        Expr::Set { items, .. } => {
            let mut items: Vec<String> =
                items.iter().map(|i| constant(i)).collect::<Option<_>>()?;
            items.sort();
            items.dedup();
            format!("set({})", items.join(","))
        }
        Expr::Object { fields, .. } => {
            let mut fields: Vec<String> = fields
                .iter()
                .map(|(_, k, v)| Some(format!("{}:{}", constant(k)?, constant(v)?)))
                .collect::<Option<_>>()?;
            fields.sort();
            format!("{{{}}}", fields.join(","))
        }
        _ => return None,
    })
}

fn squeeze(text: &str) -> String {
    text.split_whitespace().collect()
}
