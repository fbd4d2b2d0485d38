//! Secrets by reference: `env: {DB_PASSWORD: "secret://db/password"}` is
//! resolved from the configured secrets directory (e.g. a Kubernetes
//! secret mount) after policy granted every named secret to the principal
//! (`policies/secrets.rego`, which sees the names only).
//!
//! The value goes into the sandbox's environment and into the task's
//! redaction rules, and nowhere else: not the task row, the decision log,
//! the audit record (which hashes the request with the references, not the
//! values) or any log line. Files are opened through `cap-std` under the
//! directory, so a symlink or `..` cannot lead outside it, and are capped
//! in size.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use mcp_core::secrets;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// `[secrets]` of the configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsSettings {
    /// Where secrets are read from; `None` = secret references are refused.
    pub dir: Option<PathBuf>,
    /// Largest secret file read, in bytes.
    pub max_bytes: u64,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: 64 * 1024,
        }
    }
}

/// Secrets by reference (`[secrets]`): `env` values `secret://NAME`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecrets {
    /// Directory holding one file per secret (e.g. a Kubernetes secret
    /// mount); empty = secret references are refused.
    pub dir: PathBuf,
    /// Largest secret file, in bytes.
    pub max_bytes: u64,
}

impl Default for RawSecrets {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            max_bytes: 64 * 1024,
        }
    }
}

/// Validates `[secrets]`.
pub fn validate(raw: &RawSecrets, problems: &mut Vec<String>) -> SecretsSettings {
    let dir = (!raw.dir.as_os_str().is_empty()).then(|| raw.dir.clone());
    if let Some(d) = &dir
        && !d.is_dir()
    {
        problems.push(format!("secrets.dir {} is not a directory", d.display()));
    }
    if raw.max_bytes == 0 {
        problems.push("secrets.max_bytes must be at least 1".to_owned());
    }
    SecretsSettings {
        dir,
        max_bytes: raw.max_bytes,
    }
}

/// Reads one secret; `Err` is a reason safe to show (names the secret,
/// never a host path or a value).
fn read_secret(dir: &cap_std::fs::Dir, name: &str, max: u64) -> Result<String, String> {
    secrets::check_name(name)?;
    let unavailable = |why: &str| format!("secret {name:?} is not available: {why}");
    let file = dir.open(name).map_err(|e| {
        warn!(secret = name, error = %e, "cannot open secret");
        unavailable("cannot be read")
    })?;
    let meta = file.metadata().map_err(|_| unavailable("cannot be read"))?;
    if !meta.is_file() {
        return Err(unavailable("not a file"));
    }
    if meta.len() > max {
        return Err(unavailable(&format!("larger than {max} bytes")));
    }
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|_| unavailable("cannot be read"))?;
    if buf.len() as u64 > max {
        return Err(unavailable(&format!("larger than {max} bytes")));
    }
    let value = String::from_utf8(buf).map_err(|_| unavailable("not UTF-8 text"))?;
    if value.contains('\0') {
        return Err(unavailable("contains a NUL byte"));
    }
    Ok(value)
}

/// Resolves every `secret://` value of `env` under `settings.dir`:
/// answers the environment entries to set in the sandbox (name → value).
pub async fn resolve(
    settings: &SecretsSettings,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let wanted: Vec<(String, String)> = env
        .iter()
        .filter_map(|(k, v)| secrets::reference(v).map(|n| (k.clone(), n.to_owned())))
        .collect();
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let Some(dir) = settings.dir.clone() else {
        return Err("secret references are not enabled on this gateway ([secrets] dir)".to_owned());
    };
    let max = settings.max_bytes;
    tokio::task::spawn_blocking(move || {
        let root = cap_std::fs::Dir::open_ambient_dir(&dir, cap_std::ambient_authority()).map_err(
            |e| {
                warn!(error = %e, "cannot open the secrets directory");
                "the secrets directory is not available".to_owned()
            },
        )?;
        wanted
            .into_iter()
            .map(|(var, name)| read_secret(&root, &name, max).map(|v| (var, v)))
            .collect()
    })
    .await
    .map_err(|_| "secret resolution failed".to_owned())?
}

#[cfg(test)]
mod tests;
