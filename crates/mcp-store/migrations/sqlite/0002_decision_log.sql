-- The decision log: what `policy replay` and `policy log export` read.
--
-- Added to `decisions` rather than kept apart, so that a decision and its
-- log entry are written in one statement and can never disagree. Rows from
-- before this migration have no input (NULL) and a latency of 0.
-- - input: the input document as the policy saw it, JSON, after masking
--   (data.mcp.log.mask) and redaction; NULL when not kept;
-- - latency_us: wall-clock time of the evaluation in microseconds;
-- - profile: the sandbox profile the policy chose (obligations.profile);
-- - obligations: every obligation the policy set, JSON object;
-- - warnings: JSON list of strings.

ALTER TABLE decisions ADD COLUMN input TEXT;
ALTER TABLE decisions ADD COLUMN latency_us INTEGER NOT NULL DEFAULT 0 CHECK (latency_us >= 0);
ALTER TABLE decisions ADD COLUMN profile TEXT;
ALTER TABLE decisions ADD COLUMN obligations TEXT NOT NULL DEFAULT '{}';
ALTER TABLE decisions ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';

-- Export and replay read every tenant's decisions in time order.
CREATE INDEX decisions_at ON decisions (at);
