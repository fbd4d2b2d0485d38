-- Tasks and policy decisions: the PostgreSQL twin of sqlite/0001_init.sql.
--
-- Migrations are numbered like the SQLite ones, one for one, so that a
-- schema version means the same tables on both backends. The conventions
-- are the SQLite ones with PostgreSQL types:
-- - ids are canonical hyphenated UUID strings, TEXT COLLATE "C" so that
--   ordering and keyset paging compare bytes as SQLite does, whatever the
--   database's locale (UUIDv7 ids sort by creation time);
-- - timestamps are BIGINT milliseconds since the Unix epoch, UTC;
-- - u64 counters are stored as BIGINT (i64), saturated at i64::MAX;
-- - lists and maps are JSON text (TEXT, not JSONB: the rows decode exactly
--   like SQLite's; the metadata filter casts to JSONB where it needs to);
-- - a task has a result iff exit_code IS NOT NULL; the other result columns
--   hold empty/zero values when it has none.

CREATE TABLE tasks (
    id                TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    kind              TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    tenant            TEXT    NOT NULL,
    principal         TEXT    NOT NULL,
    command           TEXT    NOT NULL,
    args              TEXT    NOT NULL DEFAULT '[]',
    profile           TEXT,
    created_at        BIGINT  NOT NULL,
    started_at        BIGINT,
    completed_at      BIGINT,
    metadata          TEXT    NOT NULL DEFAULT '{}',
    exit_code         INTEGER,
    stdout            BYTEA   NOT NULL DEFAULT '',
    stderr            BYTEA   NOT NULL DEFAULT '',
    stdout_truncated  BOOLEAN NOT NULL DEFAULT FALSE,
    stderr_truncated  BOOLEAN NOT NULL DEFAULT FALSE,
    cpu_time_ms       BIGINT  NOT NULL DEFAULT 0 CHECK (cpu_time_ms >= 0),
    max_memory_kb     BIGINT  NOT NULL DEFAULT 0 CHECK (max_memory_kb >= 0),
    io_read_bytes     BIGINT  NOT NULL DEFAULT 0 CHECK (io_read_bytes >= 0),
    io_write_bytes    BIGINT  NOT NULL DEFAULT 0 CHECK (io_write_bytes >= 0),
    execution_time_ms BIGINT  NOT NULL DEFAULT 0 CHECK (execution_time_ms >= 0),
    failure_reason    TEXT,
    owner             TEXT    NOT NULL
);

-- Listing a tenant's tasks, newest first.
CREATE INDEX tasks_tenant_created ON tasks (tenant, created_at);
-- Startup recovery: the non-terminal tasks of one replica.
CREATE INDEX tasks_owner_state ON tasks (owner, state);

CREATE TABLE decisions (
    id              TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    at              BIGINT  NOT NULL,
    tenant          TEXT    NOT NULL,
    principal       TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    summary         TEXT    NOT NULL,
    allow           BOOLEAN NOT NULL,
    deny_reasons    TEXT    NOT NULL DEFAULT '[]',
    policy_revision TEXT    NOT NULL,
    -- No foreign key: a decision is recorded before its task exists, and a
    -- denied request never gets a task.
    task_id         TEXT
);

-- Audit queries: a tenant's decisions over time, and the decision behind a task.
CREATE INDEX decisions_tenant_at ON decisions (tenant, at);
CREATE INDEX decisions_task ON decisions (task_id) WHERE task_id IS NOT NULL;

-- PostgreSQL only: which database this is. The task store and the audit
-- log each read it at open; equal ids mean one database, so the log may
-- commit the store's writes in its own transaction
-- (TaskStore::shares_database). gen_random_uuid() is built in since 13.
CREATE TABLE store_instance (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    id       UUID    NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO store_instance DEFAULT VALUES;
