-- Approval, idempotency keys and single-use approval tokens: the
-- PostgreSQL twin of sqlite/0004_approval_idempotency.sql (see there).
-- Both tables are global: every replica on this database claims keys and
-- tokens in them, so a key or a token is used once across replicas.

ALTER TABLE tasks ADD COLUMN approval TEXT;
ALTER TABLE tasks ADD COLUMN approval_expires_at BIGINT;
ALTER TABLE tasks ADD COLUMN decided_by TEXT;

-- The expiry sweep: pending tasks by expiry time.
CREATE INDEX tasks_pending_expiry ON tasks (approval_expires_at)
    WHERE state = 'pending_approval';

CREATE TABLE idempotency_keys (
    tenant       TEXT   NOT NULL,
    principal    TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    task_id      TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant, principal, key)
);

CREATE TABLE used_approval_tokens (
    jti        TEXT   PRIMARY KEY NOT NULL,
    task_id    TEXT   NOT NULL,
    used_at    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
