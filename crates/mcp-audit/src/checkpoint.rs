//! Signed checkpoints: an Ed25519 signature over a position in the chain.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};

use crate::error::AuditError;
use crate::record::FORMAT;

/// A signed statement "the record `seq` has hash `hash`", made at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub at_ms: i64,
    pub hash: String,
    /// Hex of the signer's public key, so a verifier can tell a checkpoint
    /// made with another key from a forged one.
    pub key_id: String,
    /// Hex of the Ed25519 signature over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    /// The signed bytes.
    pub fn message(seq: u64, hash: &str, at_ms: i64) -> Vec<u8> {
        format!("{FORMAT} checkpoint\n{seq}\n{hash}\n{at_ms}\n").into_bytes()
    }

    /// Whether the signature is `key`'s over this checkpoint's fields.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        key.verify(&Self::message(self.seq, &self.hash, self.at_ms), &sig)
            .is_ok()
    }
}

/// The gateway's checkpoint signing key.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Signer")
            .field("key_id", &self.key_id())
            .finish()
    }
}

impl Signer {
    /// A signer from raw secret key bytes (tests, key generation).
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(secret),
        }
    }

    /// A signer from a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem(pem: &str) -> Result<Self, AuditError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|_| AuditError::BadKey {
                what: "text".to_owned(),
                expected: "PKCS#8 private",
            })
    }

    /// Reads [`Signer::from_pem`] from a file.
    pub fn load(path: &Path) -> Result<Self, AuditError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuditError::KeyFile {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&text).map_err(|_| AuditError::BadKey {
            what: path.display().to_string(),
            expected: "PKCS#8 private",
        })
    }

    /// The public half, for verification.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Hex of the public key.
    pub fn key_id(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The PKCS#8 PEM text of this key (for `audit keygen` and tests).
    pub fn to_pem(&self) -> Option<String> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        self.key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .ok()
            .map(|z| z.to_string())
    }

    /// Signs the position `(seq, hash)` at `at_ms`.
    pub fn checkpoint(&self, seq: u64, hash: &str, at_ms: i64) -> Checkpoint {
        let sig = self.key.sign(&Checkpoint::message(seq, hash, at_ms));
        Checkpoint {
            seq,
            at_ms,
            hash: hash.to_owned(),
            key_id: self.key_id(),
            signature: hex::encode(sig.to_bytes()),
        }
    }
}

/// A verifying key from PEM text: an SPKI public key
/// (`openssl pkey -pubout`) or, for convenience on the gateway's own host,
/// the PKCS#8 private key (its public half is used).
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, AuditError> {
    if let Ok(k) = VerifyingKey::from_public_key_pem(pem) {
        return Ok(k);
    }
    SigningKey::from_pkcs8_pem(pem)
        .map(|k| k.verifying_key())
        .map_err(|_| AuditError::BadKey {
            what: "text".to_owned(),
            expected: "public or private",
        })
}
