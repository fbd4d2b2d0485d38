//! Records and their canonical encoding.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The encoding version, part of every hash: records written under a new
/// encoding get a new tag and can never be confused with old ones.
pub const FORMAT: &str = "mcp-audit/v1";

/// What the first record links to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The policy decision behind a request, as far as the audit keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionSummary {
    /// The policy revision that decided.
    pub revision: String,
    pub allow: bool,
    /// Deny reasons; empty when allowed.
    pub reasons: Vec<String>,
}

/// One audited event, before it has a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix milliseconds, UTC.
    pub at_ms: i64,
    /// The request id (UUIDv7), or the task's id for a task's end.
    pub request_id: String,
    /// The W3C trace id, when the request was traced.
    pub trace_id: Option<String>,
    pub principal: String,
    pub tenant: String,
    /// What was asked: `execute`, `run`, `status`, `list`, `cancel`,
    /// `output`, `read_file`, `write_file`, `delete_file`, `task_end`,
    /// `approve`, `reject`, ...
    pub action: String,
    pub decision: Option<DecisionSummary>,
    pub task_id: Option<String>,
    /// The command line or file path, with secrets redacted.
    pub command: Option<String>,
    /// SHA-256 (hex) of the full request input (argv, env names and
    /// values, file content), so an input can be proven later without the
    /// audit keeping it.
    pub input_sha256: Option<String>,
    /// SHA-256 (hex) of the full output (task end, file read).
    pub output_sha256: Option<String>,
    /// `allowed`, `denied`, `ok`, `error:<kind>`, `completed:<exit code>`, ...
    pub outcome: String,
    /// Time from the request's arrival to this record, in microseconds.
    pub latency_us: u64,
}

/// An event sealed into the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The previous record's hash ([`GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// [`record_hash`] of this record.
    pub hash: String,
}

/// The encoded form: struct fields serialise in declaration order, there
/// are no maps, and serde_json writes compact output with one escaping of
/// each string, so the same record always gives the same bytes.
#[derive(Serialize)]
struct Canonical<'a> {
    format: &'static str,
    seq: u64,
    at_ms: i64,
    request_id: &'a str,
    trace_id: Option<&'a str>,
    principal: &'a str,
    tenant: &'a str,
    action: &'a str,
    decision: Option<&'a DecisionSummary>,
    task_id: Option<&'a str>,
    command: Option<&'a str>,
    input_sha256: Option<&'a str>,
    output_sha256: Option<&'a str>,
    outcome: &'a str,
    latency_us: u64,
}

/// The canonical encoding of the record `seq` holding `event`.
pub fn canonical_bytes(seq: u64, event: &AuditEvent) -> Vec<u8> {
    let c = Canonical {
        format: FORMAT,
        seq,
        at_ms: event.at_ms,
        request_id: &event.request_id,
        trace_id: event.trace_id.as_deref(),
        principal: &event.principal,
        tenant: &event.tenant,
        action: &event.action,
        decision: event.decision.as_ref(),
        task_id: event.task_id.as_deref(),
        command: event.command.as_deref(),
        input_sha256: event.input_sha256.as_deref(),
        output_sha256: event.output_sha256.as_deref(),
        outcome: &event.outcome,
        latency_us: event.latency_us,
    };
    // Serialising a struct of strings, numbers and options cannot fail; the
    // fallback keeps this panic-free and would still change the hash.
    serde_json::to_vec(&c).unwrap_or_default()
}

/// SHA-256 over `FORMAT`, `prev_hash` and the canonical encoding, each
/// followed by a NUL so no field can run into the next; lowercase hex.
pub fn record_hash(seq: u64, prev_hash: &str, event: &AuditEvent) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update([0]);
    h.update(prev_hash.as_bytes());
    h.update([0]);
    h.update(canonical_bytes(seq, event));
    hex::encode(h.finalize())
}

/// Places `event` at `seq` after the record whose hash is `prev_hash`.
pub fn seal(seq: u64, prev_hash: &str, event: AuditEvent) -> AuditRecord {
    let hash = record_hash(seq, prev_hash, &event);
    AuditRecord {
        seq,
        event,
        prev_hash: prev_hash.to_owned(),
        hash,
    }
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
