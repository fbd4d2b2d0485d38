use std::path::PathBuf;

use thiserror::Error;

/// Why an audit key could not be used.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The key file could not be read.
    #[error("cannot read audit key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is neither a PKCS#8 Ed25519 private key nor an SPKI public key.
    #[error("audit key {what} is not a PEM Ed25519 {expected} key")]
    BadKey {
        what: String,
        expected: &'static str,
    },
}
