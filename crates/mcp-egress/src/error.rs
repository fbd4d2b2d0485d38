//! Errors of the egress proxy.

use std::path::PathBuf;

/// What can go wrong setting up the proxy. Per-connection problems are
/// answered on the connection (403, 502, SOCKS replies), not errors.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot listen on egress socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
