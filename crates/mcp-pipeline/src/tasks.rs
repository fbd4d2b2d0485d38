//! What a client can do with its tasks: look at one (`status`), list
//! them, cancel one, follow its output; and the start-up recovery of the
//! tasks a previous run left behind. Every answer is audited.

use std::collections::BTreeMap;
use std::sync::Arc;

use mcp_core::{ChunkKind, OutputChunk, TaskId, TaskRecord, TaskState, now};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::approval::sweep;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::live::{Cursor, LiveTask};
use crate::plan::Caller;

/// Filters of a task listing, as a front door received them.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// A state name (`running`, or `TASK_RUNNING`).
    pub state: Option<String>,
    /// RFC 3339; created at or after.
    pub since: Option<String>,
    /// RFC 3339; created before.
    pub until: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1..=100; 50 when absent.
    pub limit: Option<u32>,
    /// Only tasks whose metadata holds every one of these pairs.
    pub metadata: BTreeMap<String, String>,
}

/// Where a task's output comes from: the live buffer while it runs, the store after.
#[derive(Debug)]
pub enum Output {
    Live(Arc<LiveTask>),
    Stored(Box<TaskRecord>),
}

impl Output {
    /// Sends the task's chunks, mapped by `map`, to `tx` until its exit
    /// code, or until the client goes away (the task goes on). Shared by
    /// the gRPC stream and the REST event stream.
    pub async fn follow<T>(self, tx: tokio::sync::mpsc::Sender<T>, map: impl Fn(OutputChunk) -> T) {
        let live = match self {
            Output::Stored(rec) => {
                for ch in stored_chunks(*rec) {
                    if tx.send(map(ch)).await.is_err() {
                        return;
                    }
                }
                return;
            }
            Output::Live(live) => live,
        };
        let mut cursor = Cursor::default();
        let mut rx = live.subscribe();
        loop {
            let (chunks, done) = live.read_from(&mut cursor);
            for ch in chunks {
                if tx.send(map(ch)).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            if rx.changed().await.is_err() {
                warn!("live output ended without finishing");
                return;
            }
        }
    }
}

/// The chunks a finished task replays, for every front door: its stored
/// (capped) stdout and stderr, what ended it, and its exit code.
pub(crate) fn stored_chunks(t: TaskRecord) -> Vec<OutputChunk> {
    let ts = i64::try_from(
        t.completed_at
            .unwrap_or(t.created_at)
            .unix_timestamp_nanos()
            / 1_000_000,
    )
    .unwrap_or(0);
    let mut out = Vec::new();
    let mut push = |kind, data: Vec<u8>| {
        if !data.is_empty() {
            out.push(OutputChunk {
                kind,
                data,
                timestamp_ms: ts,
            });
        }
    };
    let code = match t.result {
        Some(r) => {
            push(ChunkKind::Stdout, r.stdout);
            push(ChunkKind::Stderr, r.stderr);
            r.exit_code
        }
        None => -1,
    };
    if t.state != TaskState::Completed
        && let Some(reason) = t.failure_reason
    {
        push(ChunkKind::Event, reason.into_bytes());
    }
    push(ChunkKind::ExitCode, code.to_string().into_bytes());
    out
}

impl Gateway {
    /// Marks tasks this replica left unfinished (it died while they ran) as
    /// failed with reason `interrupted`. Run once at start-up.
    pub async fn recover(&self) -> Result<u64, GatewayError> {
        let n = self
            .store
            .mark_interrupted(&self.settings.replica_id, now())
            .await
            .map_err(GatewayError::Store)?;
        if n > 0 {
            warn!(
                count = n,
                "marked tasks interrupted by the previous run as failed"
            );
        }
        // Pending approvals outlive restarts; their expiry is swept from now on.
        tokio::spawn(sweep(
            self.store.clone(),
            self.settings.approval.sweep_interval,
            self.closing.clone(),
        ));
        Ok(n)
    }

    pub async fn status(&self, caller: &Caller, id: &str) -> Result<TaskRecord, GatewayError> {
        let answer = self.lookup(caller, id).await;
        self.audit_answer(caller, "status", Some(id), answer).await
    }

    /// [`Gateway::status`] without an audit record, for the pipeline's own looks.
    pub(crate) async fn lookup(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<TaskRecord, GatewayError> {
        self.status_in(&caller.principal.tenant, id.parse()?).await
    }

    /// One page of the caller's tenant's tasks, newest first, and the cursor
    /// of the next page. Never another tenant's tasks.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: ListFilter,
    ) -> Result<(Vec<TaskRecord>, Option<TaskId>), GatewayError> {
        let answer = self.list_tasks(caller, filter).await;
        self.audit_answer(caller, "list", None, answer).await
    }

    async fn list_tasks(
        &self,
        caller: &Caller,
        filter: ListFilter,
    ) -> Result<(Vec<TaskRecord>, Option<TaskId>), GatewayError> {
        let bad = |field: &str, reason: String| GatewayError::MalformedRequest {
            field: Some(field.to_owned()),
            reason,
        };
        let state = match filter.state.as_deref() {
            None | Some("") => None,
            Some(s) => {
                let name = s.trim_start_matches("TASK_").to_ascii_lowercase();
                Some(name.parse::<TaskState>().map_err(|e| bad("status", e))?)
            }
        };
        let time = |field: &str, v: Option<&str>| -> Result<Option<OffsetDateTime>, GatewayError> {
            v.filter(|v| !v.is_empty())
                .map(|v| {
                    OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| bad(field, format!("{v:?} is not an RFC 3339 time")))
                })
                .transpose()
        };
        let limit = filter.limit.unwrap_or(50);
        if !(1..=mcp_store::MAX_TASK_PAGE).contains(&limit) {
            return Err(bad(
                "limit",
                format!("{limit} is not between 1 and {}", mcp_store::MAX_TASK_PAGE),
            ));
        }
        let query = mcp_store::TaskQuery {
            tenant: caller.principal.tenant.clone(),
            state,
            since: time("since", filter.since.as_deref())?,
            until: time("until", filter.until.as_deref())?,
            before: filter
                .cursor
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(str::parse::<TaskId>)
                .transpose()?,
            limit,
            metadata: filter.metadata,
        };
        let tasks = self
            .store
            .list_tasks(&query)
            .await
            .map_err(GatewayError::Store)?;
        let next = (tasks.len() == limit as usize)
            .then(|| tasks.last().map(|t| t.id))
            .flatten();
        Ok((tasks, next))
    }

    /// Cancels a queued or running task and answers with its final record.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<TaskRecord, GatewayError> {
        let answer = self.cancel_task(caller, id).await;
        self.audit_answer(caller, "cancel", Some(id), answer).await
    }

    async fn cancel_task(&self, caller: &Caller, id: &str) -> Result<TaskRecord, GatewayError> {
        let rec = self.lookup(caller, id).await?;
        if rec.state.is_terminal() {
            return Err(GatewayError::TaskFinished {
                id: rec.id,
                state: rec.state,
            });
        }
        if rec.state == TaskState::PendingApproval {
            // Nothing runs yet: the requester (or anyone of the tenant who
            // may cancel) ends the wait.
            let done = self
                .store
                .finish_pending(
                    &caller.principal.tenant,
                    rec.id,
                    TaskState::Cancelled,
                    now(),
                    "cancelled by client while pending approval",
                    None,
                )
                .await
                .map_err(GatewayError::Store)?;
            if done {
                return self.lookup(caller, id).await;
            }
            let again = self.lookup(caller, id).await?;
            if again.state.is_terminal() {
                return Err(GatewayError::TaskFinished {
                    id: again.id,
                    state: again.state,
                });
            }
            // It was approved meanwhile: cancel it like any running task.
        }
        let Some(live) = self.live.get(rec.id) else {
            // It finished between the two looks, or another replica runs it.
            let again = self.lookup(caller, id).await?;
            return if again.state.is_terminal() {
                Err(GatewayError::TaskFinished {
                    id: again.id,
                    state: again.state,
                })
            } else {
                Err(GatewayError::Unsupported {
                    what: format!("cancelling a task run by replica {:?}", again.owner),
                })
            };
        };
        info!(task_id = %rec.id, request_id = %caller.request_id, "cancel requested");
        live.cancel("cancelled by client");
        live.wait_done().await;
        self.lookup(caller, id).await
    }

    /// The output of a task the caller may see.
    pub async fn output(&self, caller: &Caller, id: &str) -> Result<Output, GatewayError> {
        let answer = self.open_output(caller, id).await;
        self.audit_answer(caller, "output", Some(id), answer).await
    }

    async fn open_output(&self, caller: &Caller, id: &str) -> Result<Output, GatewayError> {
        let rec = self.lookup(caller, id).await?;
        if !rec.state.is_terminal()
            && let Some(live) = self.live.get(rec.id)
        {
            return Ok(Output::Live(live));
        }
        if rec.state.is_terminal() {
            return Ok(Output::Stored(Box::new(rec)));
        }
        // It finished while we looked: read the final record.
        let rec = self.lookup(caller, id).await?;
        Ok(Output::Stored(Box::new(rec)))
    }

    /// A task of `tenant` (for callers whose tenant is not the caller's
    /// principal, e.g. an approver with a token).
    pub(crate) async fn status_in(
        &self,
        tenant: &str,
        id: TaskId,
    ) -> Result<TaskRecord, GatewayError> {
        self.store
            .get_task(tenant, id)
            .await
            .map_err(GatewayError::Store)?
            .ok_or(GatewayError::TaskNotFound { id })
    }

    /// Cancels a task running here, if it is.
    pub(crate) fn cancel_live(&self, id: TaskId, reason: &str) {
        if let Some(live) = self.live.get(id) {
            live.cancel(reason);
        }
    }
}
