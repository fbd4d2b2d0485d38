//! The restricted-network tasks accepted but not yet started, and what
//! each one's connections will be decided against; the egress forwarder
//! resolver and connector. Held by the [`crate::gateway::Gateway`]; the proxy and
//! its decider are [`crate::egress`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use mcp_core::{Destination, NetworkAccess, ObligationSet, TaskId};
use mcp_egress::{Connector, Resolver, SystemResolver, TcpConnector};
use mcp_sandbox::RunSpec;

use crate::plan::Caller;

/// The gateway-wide egress settings.
#[derive(Debug)]
pub(crate) struct EgressState {
    /// The binary bound into restricted sandboxes as the forwarder.
    pub(crate) forwarder: RwLock<PathBuf>,
    /// Resolves destination names (the system resolver unless replaced).
    pub(crate) resolver: RwLock<Arc<dyn Resolver>>,
    /// Opens upstream connections (plain TCP unless replaced).
    pub(crate) connector: RwLock<Arc<dyn Connector>>,
    /// Restricted tasks accepted but not yet started.
    pending: Mutex<HashMap<TaskId, TaskEgress>>,
}

impl EgressState {
    /// Remembers how `spec`'s connections are decided, when it asks for
    /// restricted network access.
    pub(crate) fn register(&self, spec: &RunSpec, caller: &Caller, obligations: &ObligationSet) {
        if spec.network == NetworkAccess::Restricted {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(spec.task_id, TaskEgress::new(caller, obligations));
        }
    }

    /// Forgets a task that ends without running (cancelled while queued).
    pub(crate) fn forget(&self, task: TaskId) {
        self.take(task);
    }

    pub(crate) fn take(&self, task: TaskId) -> Option<TaskEgress> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task)
    }
}

impl Default for EgressState {
    fn default() -> Self {
        EgressState {
            forwarder: RwLock::new(std::env::current_exe().unwrap_or_default()),
            resolver: RwLock::new(Arc::new(SystemResolver)),
            connector: RwLock::new(Arc::new(TcpConnector)),
            pending: Mutex::new(HashMap::new()),
        }
    }
}

/// What a restricted task's connections are decided against.
#[derive(Debug, Clone)]
pub(crate) struct TaskEgress {
    pub(crate) caller: Caller,
    /// The command decision's `network` obligation; `None` when the policy
    /// set none (then the network policy alone decides).
    pub(crate) destinations: Option<Vec<Destination>>,
}

impl TaskEgress {
    /// From the command decision's obligations.
    fn new(caller: &Caller, obligations: &ObligationSet) -> TaskEgress {
        TaskEgress {
            caller: caller.clone(),
            destinations: obligations.network.clone(),
        }
    }
}

/// The value of one of [`EgressState`]'s settings now. A poisoned lock
/// still holds a whole value (each write is one assignment), so it is read.
pub(crate) fn current<T: Clone>(setting: &RwLock<T>) -> T {
    setting.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Replaces one of [`EgressState`]'s settings for tasks started from now.
pub(crate) fn replace<T>(setting: &RwLock<T>, value: T) {
    *setting.write().unwrap_or_else(|e| e.into_inner()) = value;
}
