-- The audit trail: the PostgreSQL twin of sqlite/0003_audit.sql (see there
-- and crates/mcp-audit for the encoding).
--
-- - seq: 1, 2, 3, ... with no gaps. Several gateway processes may append;
--   each append transaction first takes a transaction-scoped advisory lock
--   (src/audit.rs explains the choice), then reads the head and inserts,
--   so two appends never take the same place; the primary key is the
--   second line: a forked chain cannot be stored.
-- - the triggers make the tables append-only for every role but one that
--   drops them, which is what the chain and the signed checkpoints are for.

CREATE TABLE audit_log (
    seq               BIGINT  PRIMARY KEY NOT NULL CHECK (seq >= 1),
    at                BIGINT  NOT NULL,
    request_id        TEXT    NOT NULL,
    trace_id          TEXT,
    principal         TEXT    NOT NULL,
    tenant            TEXT    NOT NULL,
    action            TEXT    NOT NULL,
    decision_revision TEXT,
    decision_allow    BOOLEAN,
    decision_reasons  TEXT,
    task_id           TEXT,
    command           TEXT,
    input_sha256      TEXT,
    output_sha256     TEXT,
    outcome           TEXT    NOT NULL,
    latency_us        BIGINT  NOT NULL CHECK (latency_us >= 0),
    prev_hash         TEXT    NOT NULL,
    hash              TEXT    NOT NULL
);

-- `audit export --since`.
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY NOT NULL,
    at        BIGINT NOT NULL,
    hash      TEXT   NOT NULL,
    key_id    TEXT   NOT NULL,
    signature TEXT   NOT NULL
);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
