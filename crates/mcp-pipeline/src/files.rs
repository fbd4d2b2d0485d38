//! File operations (`read_file`, `write_file`, `delete_file`): validate →
//! decide → record, then the tenant's files root (`mcp_sandbox::FilesRoot`,
//! through `cap-std`).

use std::sync::Arc;

use mcp_core::{FileOp, FileRequest, ValidFile};
use mcp_policy::PolicyInput;
use mcp_sandbox::FileError;
use tracing::error;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::plan::Caller;
use crate::record::DecisionEntry;

impl Gateway {
    pub async fn read_file(
        &self,
        caller: &Caller,
        path: &str,
    ) -> Result<(String, Vec<u8>), GatewayError> {
        let valid = self
            .decide_file(caller, path, FileOp::Read, 0, 0, false)
            .await?;
        let content = self
            .files
            .read(&caller.principal.tenant, &valid)
            .await
            .map_err(file_error)?;
        Ok((valid.path, content))
    }

    pub async fn write_file(
        &self,
        caller: &Caller,
        path: &str,
        content: &[u8],
        create_dirs: bool,
        mode: u32,
    ) -> Result<(String, u64), GatewayError> {
        let valid = self
            .decide_file(caller, path, FileOp::Write, content.len(), mode, false)
            .await?;
        let n = self
            .files
            .write(&caller.principal.tenant, &valid, content, create_dirs)
            .await
            .map_err(file_error)?;
        Ok((valid.path, n))
    }

    pub async fn delete_file(
        &self,
        caller: &Caller,
        path: &str,
        recursive: bool,
    ) -> Result<String, GatewayError> {
        let valid = self
            .decide_file(caller, path, FileOp::Delete, 0, 0, recursive)
            .await?;
        self.files
            .delete(&caller.principal.tenant, &valid)
            .await
            .map_err(file_error)?;
        Ok(valid.path)
    }

    async fn decide_file(
        &self,
        caller: &Caller,
        path: &str,
        op: FileOp,
        content_len: usize,
        mode: u32,
        recursive: bool,
    ) -> Result<ValidFile, GatewayError> {
        let valid = FileRequest {
            path: path.to_owned(),
            op,
            content_len,
            mode,
            recursive,
        }
        .validate(&self.settings.limits)?;
        let input = PolicyInput::file(&caller.principal, &valid, &self.context(caller));
        let (decision, details) = self.decide(input);
        let details = Arc::new(details);
        let summary = format!("{} {}", op.as_str(), valid.path);
        let entry = DecisionEntry {
            caller,
            kind: "file",
            summary: &summary,
            decision: &decision,
            task_id: None,
        };
        self.record_decision_audited(
            entry,
            &details,
            Self::file_entry(op, &decision, &valid),
            None,
        )
        .await?;
        if !decision.allow {
            return Err(GatewayError::Denied {
                reasons: decision.deny_reasons,
            });
        }
        Ok(valid)
    }
}

/// Maps file-system outcomes to what a client may learn. Host paths and
/// I/O details stay in the log.
fn file_error(e: FileError) -> GatewayError {
    match e {
        FileError::NotFound { path } => GatewayError::FileNotFound { path },
        FileError::IsADirectory { path } => GatewayError::FileConflict {
            path,
            reason: "is a directory",
        },
        FileError::NotADirectory { path } => GatewayError::FileConflict {
            path,
            reason: "a parent is not a directory",
        },
        FileError::DirectoryNotEmpty { path } => GatewayError::FileConflict {
            path,
            reason: "directory is not empty; set recursive to delete it",
        },
        FileError::ParentMissing { path } => GatewayError::FileConflict {
            path,
            reason: "parent directory does not exist; set create_dirs to create it",
        },
        FileError::Escape { path } => GatewayError::PathEscapes { path },
        FileError::TooLarge { path, size, max } => GatewayError::FileTooLarge { path, size, max },
        e @ (FileError::BadTenant { .. } | FileError::Io { .. }) => {
            error!(error = %e, "file operation failed");
            GatewayError::FileIo(e)
        }
    }
}
