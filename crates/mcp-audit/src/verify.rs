//! Verification of a stored chain, one record at a time (the log can be
//! larger than memory).

use std::collections::VecDeque;
use std::fmt;

use ed25519_dalek::VerifyingKey;

use crate::checkpoint::Checkpoint;
use crate::record::{AuditRecord, GENESIS_HASH, record_hash};

/// What is wrong at a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The record with this number is absent: the next one present is `found`.
    Missing { found: u64 },
    /// The record does not link to its predecessor's hash.
    BrokenLink,
    /// The record's content does not give its stored hash (edited, moved).
    HashMismatch,
    /// A signed checkpoint names another hash for this record.
    CheckpointMismatch,
    /// A checkpoint's signature does not verify with the key.
    BadSignature,
    /// A checkpoint was signed by a key other than the one given.
    OtherKey { key_id: String },
    /// A checkpoint names a record after the last one stored: the tail of
    /// the log was cut off.
    Truncated { last: u64 },
}

/// The first problem found, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The first bad sequence number.
    pub seq: u64,
    pub problem: Problem,
}

impl std::error::Error for Finding {}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.problem {
            Problem::Missing { found } => {
                write!(f, "record {seq} is missing (the next record is {found})")
            }
            Problem::BrokenLink => write!(
                f,
                "record {seq} does not link to the hash of record {}",
                seq.saturating_sub(1)
            ),
            Problem::HashMismatch => {
                write!(
                    f,
                    "record {seq} does not match its hash (modified or moved)"
                )
            }
            Problem::CheckpointMismatch => write!(
                f,
                "record {seq} does not match the hash its signed checkpoint names"
            ),
            Problem::BadSignature => {
                write!(f, "the checkpoint at record {seq} has an invalid signature")
            }
            Problem::OtherKey { key_id } => write!(
                f,
                "the checkpoint at record {seq} was signed by another key ({key_id})"
            ),
            Problem::Truncated { last } => write!(
                f,
                "record {seq} is missing: the log ends at {last} but a signed checkpoint names a later record"
            ),
        }
    }
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// The last sequence number (0 for an empty log).
    pub last_seq: u64,
    pub last_hash: String,
    pub checkpoints: u64,
    /// False when no key was given: checkpoints were compared with the
    /// chain, their signatures were not checked.
    pub signatures_checked: bool,
    /// Records after the last checkpoint: their truncation cannot be
    /// detected until the next checkpoint covers them.
    pub unanchored: u64,
}

/// Checks records fed in sequence order against each other and against
/// the signed checkpoints.
#[derive(Debug)]
pub struct Verifier {
    key: Option<VerifyingKey>,
    checkpoints: VecDeque<Checkpoint>,
    expected: u64,
    prev_hash: String,
    checked_checkpoints: u64,
    last_checkpoint: u64,
}

impl Verifier {
    /// `checkpoints` in any order; `key` checks their signatures.
    pub fn new(mut checkpoints: Vec<Checkpoint>, key: Option<VerifyingKey>) -> Self {
        checkpoints.sort_by_key(|c| c.seq);
        Self {
            key,
            checkpoints: checkpoints.into(),
            expected: 1,
            prev_hash: GENESIS_HASH.to_owned(),
            checked_checkpoints: 0,
            last_checkpoint: 0,
        }
    }

    /// Checks the next record; records must come in ascending `seq`.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), Finding> {
        let bad = |seq, problem| Err(Finding { seq, problem });
        if r.seq != self.expected {
            return bad(self.expected, Problem::Missing { found: r.seq });
        }
        if r.prev_hash != self.prev_hash {
            return bad(r.seq, Problem::BrokenLink);
        }
        if record_hash(r.seq, &r.prev_hash, &r.event) != r.hash {
            return bad(r.seq, Problem::HashMismatch);
        }
        // Checkpoints for earlier numbers were consumed with their records,
        // so anything left up to here is at this record (or a bogus seq 0).
        while self.checkpoints.front().is_some_and(|c| c.seq <= r.seq) {
            if let Some(c) = self.checkpoints.pop_front() {
                self.check_checkpoint(&c, r)?;
            }
        }
        self.expected = r.seq.saturating_add(1);
        self.prev_hash.clone_from(&r.hash);
        Ok(())
    }

    fn check_checkpoint(&mut self, c: &Checkpoint, r: &AuditRecord) -> Result<(), Finding> {
        let seq = c.seq;
        if let Some(key) = &self.key {
            let id = hex::encode(key.as_bytes());
            if c.key_id != id {
                return Err(Finding {
                    seq,
                    problem: Problem::OtherKey {
                        key_id: c.key_id.clone(),
                    },
                });
            }
            if !c.verify(key) {
                return Err(Finding {
                    seq,
                    problem: Problem::BadSignature,
                });
            }
        }
        if c.seq != r.seq || c.hash != r.hash {
            return Err(Finding {
                seq,
                problem: Problem::CheckpointMismatch,
            });
        }
        self.checked_checkpoints += 1;
        self.last_checkpoint = seq;
        Ok(())
    }

    /// Ends the check: checkpoints beyond the last record mean the log
    /// was cut short.
    pub fn finish(self) -> Result<VerifyReport, Finding> {
        let last_seq = self.expected - 1;
        if let Some(c) = self.checkpoints.front() {
            // A signed checkpoint past the end proves records were removed,
            // but only if the checkpoint itself is genuine.
            if let Some(key) = &self.key
                && !c.verify(key)
            {
                return Err(Finding {
                    seq: c.seq,
                    problem: Problem::BadSignature,
                });
            }
            return Err(Finding {
                seq: last_seq + 1,
                problem: Problem::Truncated { last: last_seq },
            });
        }
        Ok(VerifyReport {
            records: last_seq,
            last_seq,
            last_hash: self.prev_hash,
            checkpoints: self.checked_checkpoints,
            signatures_checked: self.key.is_some(),
            unanchored: last_seq - self.last_checkpoint,
        })
    }
}
