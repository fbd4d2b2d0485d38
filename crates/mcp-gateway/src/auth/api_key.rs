//! API keys: the gateway stores only `sha256:<hex>` of each key.
//!
//! Why plain SHA-256 and not a password hash (argon2, bcrypt): the keys are
//! 256 random bits made by `mcp-gateway auth new-key`, not something a person
//! chose, so there is no dictionary to search and a leaked hash cannot be
//! reversed by any amount of hashing speed; a slow KDF would only add
//! milliseconds of CPU to every request. Comparison is constant-time
//! (`subtle`) and visits every configured key, so timing says neither
//! which key nor how much of it matched.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of keys made by `auth new-key`; it lets secret scanners spot a
/// leaked key. Keys without it are accepted too.
pub const KEY_PREFIX: &str = "mcpk_";

/// The SHA-256 of an API key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash(sha256:{})", hex::encode(self.0))
    }
}

impl KeyHash {
    /// Hashes a presented key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex digits>`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(hex_part) = s.strip_prefix("sha256:") else {
            return Err(
                "must look like sha256:<64 hex digits> (see `mcp-gateway auth hash-key`)"
                    .to_owned(),
            );
        };
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| "must have 64 hex digits after sha256:".to_owned())?;
        Ok(Self(out))
    }

    /// Constant-time equality.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

/// One configured key and the principal it stands for.
#[derive(Debug, Clone)]
pub struct ApiKeyEntry {
    pub id: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub hash: KeyHash,
}

/// Finds the entry whose hash is the presented key's, comparing against
/// every entry in constant time.
pub fn find<'a>(entries: &'a [ApiKeyEntry], presented: &str) -> Option<&'a ApiKeyEntry> {
    let h = KeyHash::of(presented);
    let mut found = None;
    for e in entries {
        if e.hash.matches(&h) {
            found = Some(e);
        }
    }
    found
}

/// A new random key: `mcpk_` and 64 hex digits (256 bits from the OS).
pub fn new_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}
