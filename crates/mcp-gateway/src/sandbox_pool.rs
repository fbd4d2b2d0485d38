//! `[sandbox.pool]`: the warm sandbox pool's configuration, and turning it
//! on at startup (see `mcp_sandbox::PoolSettings` for what a pooled sandbox
//! is and `docs/configuration.md` for the keys).

use std::collections::BTreeMap;
use std::path::PathBuf;

use mcp_sandbox::{MAX_POOL_SIZE, PoolSettings, STUB_SUBCOMMAND, Sandbox, SandboxError};
use serde::{Deserialize, Serialize};

/// Default of `sandbox.pool.max_total`.
const DEFAULT_MAX_TOTAL: usize = 32;

/// `[sandbox.pool]` as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RawPool {
    /// Pre-started sandboxes per (profile, tenant), by profile name; empty
    /// (the default) or 0 = that profile always starts sandboxes cold.
    pub sizes: BTreeMap<String, usize>,
    /// Most pre-started sandboxes over all profiles and tenants.
    pub max_total: usize,
    /// The stub executable; empty = this executable (`__sandbox-stub`).
    pub stub: PathBuf,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            sizes: BTreeMap::new(),
            max_total: DEFAULT_MAX_TOTAL,
            stub: PathBuf::new(),
        }
    }
}

impl RawPool {
    /// Adds what is wrong to `problems` (profile names are checked when
    /// the profiles are loaded).
    pub fn validate(&self, problems: &mut Vec<String>) {
        for (profile, size) in &self.sizes {
            if *size > MAX_POOL_SIZE {
                problems.push(format!(
                    "sandbox.pool.sizes.{profile} = {size} is above {MAX_POOL_SIZE}"
                ));
            }
        }
        if self.sizes.values().any(|s| *s > 0) && self.max_total == 0 {
            problems.push(
                "sandbox.pool.max_total must be at least 1 when a pool size is set".to_owned(),
            );
        }
    }

    /// Whether any profile is pooled.
    pub fn enabled(&self) -> bool {
        self.sizes.values().any(|s| *s > 0)
    }
}

/// The pool settings `pool` gives the sandbox; `None` when it pools no
/// profile. The stub defaults to this executable.
pub fn settings(pool: &RawPool) -> Result<Option<PoolSettings>, SandboxError> {
    if !pool.enabled() {
        return Ok(None);
    }
    let stub = if pool.stub.as_os_str().is_empty() {
        std::env::current_exe().map_err(|e| SandboxError::BadPool {
            reason: format!("cannot find this executable to use as the stub: {e}"),
        })?
    } else {
        pool.stub.clone()
    };
    Ok(Some(PoolSettings {
        sizes: pool.sizes.clone(),
        max_total: pool.max_total,
        stub,
        stub_args: vec![STUB_SUBCOMMAND.to_owned()],
    }))
}

/// Enables the pool on `sandbox` when `pool` sizes any profile. Fails
/// (at startup) on an unknown profile or a stub that cannot be used.
pub fn enable(sandbox: &Sandbox, pool: &RawPool) -> Result<(), SandboxError> {
    let Some(settings) = settings(pool)? else {
        return Ok(());
    };
    sandbox.enable_pool(settings)?;
    tracing::info!(sizes = ?pool.sizes, max_total = pool.max_total, "warm sandbox pool enabled");
    Ok(())
}

#[cfg(test)]
mod tests;
