-- The audit trail: an append-only hash chain of records and the signed
-- checkpoints over it (see crates/mcp-audit for the encoding).
--
-- - seq: 1, 2, 3, ... with no gaps; assigned by the gateway's single
--   appender under a lock, in the same transaction as the insert;
-- - hash = SHA-256(format, prev_hash, canonical encoding of the row);
-- - decision_* are NULL when the request had no policy decision;
-- - input_sha256/output_sha256: hex digests of the full input and output,
--   which the audit never keeps itself;
-- - the triggers make the tables append-only for every connection: an
--   UPDATE or DELETE aborts. They are a second line only: whoever can write
--   the file can drop them, which is what the chain and the signed
--   checkpoints are for.

CREATE TABLE audit_log (
    seq               INTEGER PRIMARY KEY NOT NULL CHECK (seq >= 1),
    at                INTEGER NOT NULL,
    request_id        TEXT    NOT NULL,
    trace_id          TEXT,
    principal         TEXT    NOT NULL,
    tenant            TEXT    NOT NULL,
    action            TEXT    NOT NULL,
    decision_revision TEXT,
    decision_allow    INTEGER CHECK (decision_allow IN (0, 1)),
    decision_reasons  TEXT,
    task_id           TEXT,
    command           TEXT,
    input_sha256      TEXT,
    output_sha256     TEXT,
    outcome           TEXT    NOT NULL,
    latency_us        INTEGER NOT NULL CHECK (latency_us >= 0),
    prev_hash         TEXT    NOT NULL,
    hash              TEXT    NOT NULL
) STRICT;

-- `audit export --since`.
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY NOT NULL,
    at        INTEGER NOT NULL,
    hash      TEXT    NOT NULL,
    key_id    TEXT    NOT NULL,
    signature TEXT    NOT NULL
) STRICT;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
