-- The decision log: the PostgreSQL twin of sqlite/0002_decision_log.sql
-- (see there for what each column holds).

ALTER TABLE decisions ADD COLUMN input TEXT;
ALTER TABLE decisions ADD COLUMN latency_us BIGINT NOT NULL DEFAULT 0 CHECK (latency_us >= 0);
ALTER TABLE decisions ADD COLUMN profile TEXT;
ALTER TABLE decisions ADD COLUMN obligations TEXT NOT NULL DEFAULT '{}';
ALTER TABLE decisions ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';

-- Export and replay read every tenant's decisions in time order.
CREATE INDEX decisions_at ON decisions (at);
