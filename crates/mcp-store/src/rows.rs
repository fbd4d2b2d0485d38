//! The raw shape of stored rows and the conversions between them and the
//! domain types. Everything here is backend-neutral: the column types (text,
//! i64, bytes, bool) exist in SQLite and PostgreSQL alike, so a PostgreSQL
//! backend reuses these rows and only brings its own SQL.

use std::collections::BTreeMap;

use mcp_core::{ResourceUsage, TaskId, TaskKind, TaskRecord, TaskResult, TaskState};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{DecisionDetails, DecisionLogEntry, DecisionRecord, StoreError};

/// Milliseconds since the Unix epoch, truncated (floored) to the millisecond.
pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    // `OffsetDateTime` spans at most ±10^4 years, about 3.2e14 ms, so this
    // always fits; saturate rather than panic all the same.
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

/// The inverse of [`to_ms`]; the result is in UTC.
pub(crate) fn from_ms(id: &str, column: &str, ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map_err(|err| {
        StoreError::Corrupt {
            id: id.to_owned(),
            reason: format!("{column} {ms} is not a valid timestamp: {err}"),
        }
    })
}

/// Stores a `u64` counter in an i64 column. Counters above `i64::MAX`
/// (9.2e18: no real CPU time, memory or I/O figure) saturate instead of
/// failing the write, so a finished task is never lost over a statistic.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(id: &str, column: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        id: id.to_owned(),
        reason: format!("{column} {value} is negative"),
    })
}

fn parse<T, E: std::fmt::Display>(
    id: &str,
    column: &str,
    raw: &str,
    f: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    f(raw).map_err(|err| StoreError::Corrupt {
        id: id.to_owned(),
        reason: format!("{column}: {err}"),
    })
}

fn json_list(id: &str, column: &str, raw: &str) -> Result<Vec<String>, StoreError> {
    parse(id, column, raw, |s| serde_json::from_str::<Vec<String>>(s))
}

fn json_map(id: &str, column: &str, raw: &str) -> Result<BTreeMap<String, String>, StoreError> {
    parse(id, column, raw, |s| {
        serde_json::from_str::<BTreeMap<String, String>>(s)
    })
}

// Lists and maps of strings always serialise (JSON escapes any string); the
// fallbacks only exist so that no code path can panic.

pub(crate) fn list_to_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn map_to_json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned())
}

/// One row of `tasks`, column for column.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TaskRow {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub tenant: String,
    pub principal: String,
    pub command: String,
    pub args: String,
    pub profile: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub metadata: String,
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub cpu_time_ms: i64,
    pub max_memory_kb: i64,
    pub io_read_bytes: i64,
    pub io_write_bytes: i64,
    pub execution_time_ms: i64,
    pub failure_reason: Option<String>,
    pub owner: String,
}

/// The column list matching [`TaskRow`], as a macro so that SQL built from
/// it with `concat!` stays a `&'static str`.
macro_rules! task_columns {
    () => {
        "id, kind, state, tenant, principal, command, args, \
     profile, created_at, started_at, completed_at, metadata, exit_code, stdout, stderr, \
     stdout_truncated, stderr_truncated, cpu_time_ms, max_memory_kb, io_read_bytes, \
     io_write_bytes, execution_time_ms, failure_reason, owner"
    };
}
pub(crate) use task_columns;

impl TryFrom<TaskRow> for TaskRecord {
    type Error = StoreError;

    fn try_from(row: TaskRow) -> Result<Self, StoreError> {
        let id = row.id.as_str();
        let result = match row.exit_code {
            None => None,
            Some(exit_code) => Some(TaskResult {
                exit_code,
                stdout: row.stdout,
                stderr: row.stderr,
                stdout_truncated: row.stdout_truncated,
                stderr_truncated: row.stderr_truncated,
                usage: ResourceUsage {
                    cpu_time_ms: to_u64(id, "cpu_time_ms", row.cpu_time_ms)?,
                    max_memory_kb: to_u64(id, "max_memory_kb", row.max_memory_kb)?,
                    io_read_bytes: to_u64(id, "io_read_bytes", row.io_read_bytes)?,
                    io_write_bytes: to_u64(id, "io_write_bytes", row.io_write_bytes)?,
                },
                execution_time_ms: to_u64(id, "execution_time_ms", row.execution_time_ms)?,
            }),
        };
        Ok(TaskRecord {
            id: parse(id, "id", id, str::parse::<TaskId>)?,
            kind: parse(id, "kind", &row.kind, str::parse::<TaskKind>)?,
            state: parse(id, "state", &row.state, str::parse::<TaskState>)?,
            tenant: row.tenant,
            principal: row.principal,
            command: row.command,
            args: json_list(id, "args", &row.args)?,
            profile: row.profile,
            created_at: from_ms(id, "created_at", row.created_at)?,
            started_at: row
                .started_at
                .map(|ms| from_ms(id, "started_at", ms))
                .transpose()?,
            completed_at: row
                .completed_at
                .map(|ms| from_ms(id, "completed_at", ms))
                .transpose()?,
            metadata: json_map(id, "metadata", &row.metadata)?,
            result,
            failure_reason: row.failure_reason,
            owner: row.owner,
        })
    }
}

/// One row of `decisions`, column for column.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DecisionRow {
    pub id: String,
    pub at: i64,
    pub tenant: String,
    pub principal: String,
    pub kind: String,
    pub summary: String,
    pub allow: bool,
    pub deny_reasons: String,
    pub policy_revision: String,
    pub task_id: Option<String>,
}

/// The column list matching [`DecisionRow`], like [`task_columns`].
macro_rules! decision_columns {
    () => {
        "id, at, tenant, principal, kind, summary, allow, deny_reasons, policy_revision, task_id"
    };
}
pub(crate) use decision_columns;

impl TryFrom<DecisionRow> for DecisionRecord {
    type Error = StoreError;

    fn try_from(row: DecisionRow) -> Result<Self, StoreError> {
        let id = row.id.as_str();
        Ok(DecisionRecord {
            id: parse(id, "id", id, Uuid::try_parse)?,
            at: from_ms(id, "at", row.at)?,
            tenant: row.tenant,
            principal: row.principal,
            kind: row.kind,
            summary: row.summary,
            allow: row.allow,
            deny_reasons: json_list(id, "deny_reasons", &row.deny_reasons)?,
            policy_revision: row.policy_revision,
            task_id: row
                .task_id
                .as_deref()
                .map(|t| parse(id, "task_id", t, str::parse::<TaskId>))
                .transpose()?,
        })
    }
}

/// One row of `decisions` with the decision-log columns of migration 0002.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DecisionLogRow {
    #[sqlx(flatten)]
    pub decision: DecisionRow,
    pub input: Option<String>,
    pub latency_us: i64,
    pub profile: Option<String>,
    pub obligations: String,
    pub warnings: String,
}

/// The column list matching [`DecisionLogRow`].
macro_rules! decision_log_columns {
    () => {
        concat!(
            $crate::rows::decision_columns!(),
            ", input, latency_us, profile, obligations, warnings"
        )
    };
}
pub(crate) use decision_log_columns;

impl TryFrom<DecisionLogRow> for DecisionLogEntry {
    type Error = StoreError;

    fn try_from(row: DecisionLogRow) -> Result<Self, StoreError> {
        let id = row.decision.id.clone();
        let id = id.as_str();
        let input = row
            .input
            .as_deref()
            .map(|raw| {
                parse(id, "input", raw, |s| {
                    serde_json::from_str::<serde_json::Value>(s)
                })
            })
            .transpose()?;
        let obligations = parse(id, "obligations", &row.obligations, |s| {
            serde_json::from_str::<mcp_core::ObligationSet>(s)
        })?;
        Ok(DecisionLogEntry {
            record: DecisionRecord::try_from(row.decision)?,
            details: DecisionDetails {
                input,
                latency_us: to_u64(id, "latency_us", row.latency_us)?,
                profile: row.profile,
                obligations,
                warnings: json_list(id, "warnings", &row.warnings)?,
            },
        })
    }
}
