//! The audit trail's logic, free of I/O: the record type, its canonical
//! encoding, the hash chain, signed checkpoints and verification.
//!
//! Storage lives in `mcp-store` (`audit` module); the gateway builds an
//! [`AuditEvent`] per request and the store seals it into an
//! [`AuditRecord`] under one lock, in one transaction.
//!
//! Invariants:
//! - a record's `hash` is SHA-256 over a domain tag, the previous record's
//!   hash and the record's [canonical encoding](canonical_bytes) (which
//!   includes its sequence number), so editing, deleting, inserting or
//!   reordering a record breaks the chain at the first record touched;
//! - sequence numbers start at 1 and are contiguous; the first record links
//!   to [`GENESIS_HASH`];
//! - a [`Checkpoint`] signs `(seq, hash, at)` with an Ed25519 key, so a
//!   rewritten chain (all hashes recomputed) or a truncated tail up to a
//!   checkpoint is caught by whoever holds the public key;
//! - the encoding never changes for a given [`FORMAT`]; a new encoding gets
//!   a new format tag.

#![forbid(unsafe_code)]

mod checkpoint;
mod error;
mod record;
mod verify;

pub use checkpoint::{Checkpoint, Signer, verifying_key_from_pem};
pub use ed25519_dalek::VerifyingKey;
pub use error::AuditError;
pub use record::{
    AuditEvent, AuditRecord, DecisionSummary, FORMAT, GENESIS_HASH, canonical_bytes, record_hash,
    seal, sha256_hex,
};
pub use verify::{Finding, Problem, Verifier, VerifyReport};

#[cfg(test)]
mod tests;
