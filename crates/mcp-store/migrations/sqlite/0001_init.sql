-- Tasks and policy decisions.
--
-- Conventions (kept identical in the PostgreSQL migrations that will follow,
-- where INTEGER becomes BIGINT, BLOB becomes BYTEA and 0/1 becomes BOOLEAN):
-- - ids are canonical hyphenated UUID strings;
-- - timestamps are INTEGER milliseconds since the Unix epoch, UTC;
-- - u64 counters are stored as INTEGER (i64), saturated at i64::MAX;
-- - lists and maps are JSON text;
-- - a task has a result iff exit_code IS NOT NULL; the other result columns
--   hold empty/zero values when it has none.

CREATE TABLE tasks (
    id                TEXT    PRIMARY KEY NOT NULL,
    kind              TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    tenant            TEXT    NOT NULL,
    principal         TEXT    NOT NULL,
    command           TEXT    NOT NULL,
    args              TEXT    NOT NULL DEFAULT '[]',
    profile           TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    completed_at      INTEGER,
    metadata          TEXT    NOT NULL DEFAULT '{}',
    exit_code         INTEGER,
    stdout            BLOB    NOT NULL DEFAULT x'',
    stderr            BLOB    NOT NULL DEFAULT x'',
    stdout_truncated  INTEGER NOT NULL DEFAULT 0 CHECK (stdout_truncated IN (0, 1)),
    stderr_truncated  INTEGER NOT NULL DEFAULT 0 CHECK (stderr_truncated IN (0, 1)),
    cpu_time_ms       INTEGER NOT NULL DEFAULT 0 CHECK (cpu_time_ms >= 0),
    max_memory_kb     INTEGER NOT NULL DEFAULT 0 CHECK (max_memory_kb >= 0),
    io_read_bytes     INTEGER NOT NULL DEFAULT 0 CHECK (io_read_bytes >= 0),
    io_write_bytes    INTEGER NOT NULL DEFAULT 0 CHECK (io_write_bytes >= 0),
    execution_time_ms INTEGER NOT NULL DEFAULT 0 CHECK (execution_time_ms >= 0),
    failure_reason    TEXT,
    owner             TEXT    NOT NULL
) STRICT;

-- Listing a tenant's tasks, newest first.
CREATE INDEX tasks_tenant_created ON tasks (tenant, created_at);
-- Startup recovery: the non-terminal tasks of one replica.
CREATE INDEX tasks_owner_state ON tasks (owner, state);

CREATE TABLE decisions (
    id              TEXT    PRIMARY KEY NOT NULL,
    at              INTEGER NOT NULL,
    tenant          TEXT    NOT NULL,
    principal       TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    summary         TEXT    NOT NULL,
    allow           INTEGER NOT NULL CHECK (allow IN (0, 1)),
    deny_reasons    TEXT    NOT NULL DEFAULT '[]',
    policy_revision TEXT    NOT NULL,
    -- No foreign key: a decision is recorded before its task exists, and a
    -- denied request never gets a task.
    task_id         TEXT
) STRICT;

-- Audit queries: a tenant's decisions over time, and the decision behind a task.
CREATE INDEX decisions_tenant_at ON decisions (tenant, at);
CREATE INDEX decisions_task ON decisions (task_id) WHERE task_id IS NOT NULL;
