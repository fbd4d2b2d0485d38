-- Approval, idempotency keys and single-use approval tokens.
--
-- - tasks.approval: JSON written by the gateway when a task waits for
--   approval: what the approver is shown (roles, reason) and everything
--   needed to run the task later, exactly as approved (resolved command,
--   args, env names with the values the client sent - never values resolved
--   from secrets -, cwd, timeout, limits, profile). NULL for tasks that never
--   needed approval.
-- - tasks.approval_expires_at: when a pending approval expires (ms).
-- - tasks.decided_by: the principal that approved or rejected it.
ALTER TABLE tasks ADD COLUMN approval TEXT;
ALTER TABLE tasks ADD COLUMN approval_expires_at INTEGER;
ALTER TABLE tasks ADD COLUMN decided_by TEXT;

-- The expiry sweep: pending tasks by expiry time.
CREATE INDEX tasks_pending_expiry ON tasks (approval_expires_at)
    WHERE state = 'pending_approval';

-- One row per (tenant, principal, key): the task the first request with
-- this key created and a hash of that request. A row older than the
-- configured window is replaced by the next request with the same key.
CREATE TABLE idempotency_keys (
    tenant       TEXT    NOT NULL,
    principal    TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    task_id      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, principal, key)
) STRICT;

-- Approval tokens are single use: the jti of every token that was used.
-- Kept past the token's expiry so a replay is refused for as long as the
-- token would verify (rows past expires_at may be deleted).
CREATE TABLE used_approval_tokens (
    jti        TEXT    PRIMARY KEY NOT NULL,
    task_id    TEXT    NOT NULL,
    used_at    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
