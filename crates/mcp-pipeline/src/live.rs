//! Output of running tasks, held in memory so that any number of
//! `StreamTaskOutput` callers can replay it from the start and then follow it
//! live. A task leaves the registry once its final state is in the store;
//! later readers get the stored (capped) output instead.
//!
//! Output is redacted on its way in: stdout and stderr each pass through a
//! [`LineRedactor`] (whole lines, with a bounded carry so a secret split
//! across chunks is seen whole) with the task's rules, so no reader, live
//! or later, ever sees a secret the rules know.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mcp_core::redact::{LineRedactor, Redactor};
use mcp_core::{ChunkKind, OutputChunk, TaskId, TaskRecord, TaskResult, TaskState};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Adjacent stdout (or stderr) pieces are merged up to this size, so a
/// command that writes byte by byte does not cost one allocation per byte.
const COALESCE_LIMIT: usize = 64 * 1024;

/// The longest unfinished line held back for redaction; longer lines are
/// released (redacted as they are) in pieces of this size.
const MAX_CARRY: usize = 16 * 1024;

/// Appended to stored output the sandbox cut at `limits.max_output_bytes`.
pub const TRUNCATED_MARKER: &[u8] = b"\n[output truncated by the gateway]\n";

#[derive(Debug, Default)]
struct Inner {
    chunks: Vec<OutputChunk>,
    done: bool,
    cancel_reason: Option<String>,
    redactor: Redactor,
    stdout: Option<LineRedactor>,
    stderr: Option<LineRedactor>,
    /// The task as the worker stored it, kept in step with its writes.
    record: Option<TaskRecord>,
    /// Whether `record` holds the stored end (it is then what a read of
    /// the store returns).
    record_final: bool,
}

/// One running task: its output so far, whether it is done, and how to
/// cancel it.
#[derive(Debug)]
pub struct LiveTask {
    inner: Mutex<Inner>,
    /// Bumped on every change so followers wake up.
    version: watch::Sender<u64>,
    cancel: CancellationToken,
}

/// A follower's position: chunks before `idx` were sent whole, and the first
/// `off` bytes of chunk `idx`. Only the last chunk ever grows.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cursor {
    idx: usize,
    off: usize,
}

impl LiveTask {
    fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            version: watch::Sender::new(0),
            cancel: CancellationToken::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave `Inner` half-updated
        // (every mutation is a single push or assignment), so a poisoned lock
        // is still safe to use.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the task's redaction rules (before any output arrives).
    pub fn set_redactor(&self, redactor: Redactor) {
        self.lock().redactor = redactor;
    }

    /// Keeps the task's record as inserted into the store.
    pub fn set_record(&self, record: TaskRecord) {
        self.lock().record = Some(record);
    }

    /// The task became `running` at `at` in the store (the first time
    /// sets `started_at`, as the store does).
    pub fn record_started(&self, at: OffsetDateTime) {
        if let Some(r) = &mut self.lock().record {
            r.state = TaskState::Running;
            r.started_at.get_or_insert(mcp_store::stored_time(at));
        }
    }

    /// The task's end was stored with these values.
    pub fn record_finished(
        &self,
        state: TaskState,
        completed_at: OffsetDateTime,
        result: Option<TaskResult>,
        reason: Option<String>,
    ) {
        let mut inner = self.lock();
        if let Some(r) = &mut inner.record {
            r.state = state;
            r.completed_at = Some(mcp_store::stored_time(completed_at));
            r.result = result;
            r.failure_reason = reason;
            inner.record_final = true;
        }
    }

    /// The stored record of a task whose end is stored, as a read of the
    /// store would return it; `None` before that or when the worker did
    /// not keep one.
    pub fn stored_record(&self) -> Option<TaskRecord> {
        let inner = self.lock();
        inner.record.clone().filter(|_| inner.record_final)
    }

    /// `r` with stdout and stderr redacted by the task's rules and, where
    /// the sandbox cut them, ending in [`TRUNCATED_MARKER`] (within the
    /// cap: the marker replaces the last bytes), as the store keeps it.
    pub fn redact_result(&self, mut r: TaskResult) -> TaskResult {
        let redactor = self.lock().redactor.clone();
        for (data, cut) in [
            (&mut r.stdout, r.stdout_truncated),
            (&mut r.stderr, r.stderr_truncated),
        ] {
            let cap = data.len();
            if let std::borrow::Cow::Owned(red) = redactor.redact_bytes(data) {
                *data = red;
            }
            if cut {
                data.truncate(cap.saturating_sub(TRUNCATED_MARKER.len()));
                data.extend_from_slice(TRUNCATED_MARKER);
            }
        }
        r
    }

    pub fn push(&self, chunk: OutputChunk) {
        if chunk.data.is_empty() {
            return;
        }
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let chunk = match chunk.kind {
                ChunkKind::Stdout | ChunkKind::Stderr => {
                    let lines = if chunk.kind == ChunkKind::Stdout {
                        &mut inner.stdout
                    } else {
                        &mut inner.stderr
                    };
                    let data = lines
                        .get_or_insert_with(|| LineRedactor::new(MAX_CARRY))
                        .push(&inner.redactor, &chunk.data);
                    if data.is_empty() {
                        return;
                    }
                    OutputChunk { data, ..chunk }
                }
                _ => {
                    // What ends or annotates the output comes after all of it.
                    flush(inner);
                    chunk
                }
            };
            append(&mut inner.chunks, chunk);
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// Marks the output complete; followers drain what is left and stop.
    pub fn finish(&self) {
        {
            let mut inner = self.lock();
            flush(&mut inner);
            inner.done = true;
        }
        self.version.send_modify(|v| *v += 1);
    }

    pub fn is_done(&self) -> bool {
        self.lock().done
    }

    /// Asks the task to stop; the first reason given wins.
    pub fn cancel(&self, reason: &str) {
        {
            let mut inner = self.lock();
            if inner.cancel_reason.is_none() {
                inner.cancel_reason = Some(reason.to_owned());
            }
        }
        self.cancel.cancel();
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn cancel_reason(&self) -> Option<String> {
        self.lock().cancel_reason.clone()
    }

    /// Everything after `cursor`, and whether the task is done. Advances the cursor.
    pub fn read_from(&self, cursor: &mut Cursor) -> (Vec<OutputChunk>, bool) {
        let inner = self.lock();
        let mut out = Vec::new();
        for (i, c) in inner.chunks.iter().enumerate().skip(cursor.idx) {
            let start = if i == cursor.idx { cursor.off } else { 0 };
            if start < c.data.len() {
                out.push(OutputChunk {
                    kind: c.kind,
                    data: c.data[start..].to_vec(),
                    timestamp_ms: c.timestamp_ms,
                });
            }
        }
        if let Some(last) = inner.chunks.last() {
            cursor.idx = inner.chunks.len() - 1;
            cursor.off = last.data.len();
        }
        (out, inner.done)
    }

    /// Waits until something changes after `rx` last looked.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Waits until the task is done.
    pub async fn wait_done(&self) {
        let mut rx = self.subscribe();
        while !self.is_done() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Adds a chunk, merging it into the last one when both are the same
/// kind of output and the result stays under [`COALESCE_LIMIT`].
fn append(chunks: &mut Vec<OutputChunk>, chunk: OutputChunk) {
    match chunks.last_mut() {
        Some(last)
            if last.kind == chunk.kind
                && matches!(chunk.kind, ChunkKind::Stdout | ChunkKind::Stderr)
                && last.data.len() + chunk.data.len() <= COALESCE_LIMIT =>
        {
            last.data.extend_from_slice(&chunk.data);
        }
        _ => chunks.push(chunk),
    }
}

/// Releases the held-back ends of stdout and stderr, redacted.
fn flush(inner: &mut Inner) {
    for kind in [ChunkKind::Stdout, ChunkKind::Stderr] {
        let lines = if kind == ChunkKind::Stdout {
            inner.stdout.take()
        } else {
            inner.stderr.take()
        };
        if let Some(mut lines) = lines {
            let data = lines.finish(&inner.redactor);
            if !data.is_empty() {
                append(&mut inner.chunks, OutputChunk::new(kind, data));
            }
        }
    }
}

/// All tasks this gateway is running.
#[derive(Debug, Default)]
pub struct LiveTasks {
    tasks: Mutex<HashMap<TaskId, Arc<LiveTask>>>,
}

impl LiveTasks {
    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<LiveTask>>> {
        // The map is only ever inserted into or removed from; see LiveTask::lock.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, id: TaskId) -> Arc<LiveTask> {
        let task = Arc::new(LiveTask::new());
        self.lock().insert(id, task.clone());
        task
    }

    pub fn get(&self, id: TaskId) -> Option<Arc<LiveTask>> {
        self.lock().get(&id).cloned()
    }

    pub fn remove(&self, id: TaskId) {
        self.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn cancel_all(&self, reason: &str) {
        for t in self.lock().values() {
            t.cancel(reason);
        }
    }
}

#[cfg(test)]
mod tests;
