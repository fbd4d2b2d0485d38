//! Restricted network access (`NETWORK_RESTRICTED`): each such task gets
//! its own egress proxy (`mcp_egress::EgressProxy`) on a unix socket that
//! `mcp-sandbox` binds into the sandbox, and every connection through it is
//! decided here: the command decision's `network` obligation (when the
//! policy set one) must list the destination, and the Rego network policy
//! (`kind: network`, with the resolved addresses as the proxy classified
//! them) must allow it. Each decision goes to the decision log like any
//! other, and so does every request the proxy refused before it could be
//! decided (malformed, unsupported).
//!
//! Internal addresses (loopback, private, link-local, metadata, the IPv6
//! forms that carry them, ...) are refused by the proxy's guard unless the
//! connection's decision grants exactly that address: its `network`
//! obligation names the addresses the connection may reach (the shipped
//! `network.rego` names them for allowlist entries marked
//! `"private": true`). An allow without that grant opens no internal
//! address; the guard is applied here too, before the decision is stored,
//! so the log says what the proxy does.

pub(crate) mod registry;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use mcp_core::{NetworkAccess, OutputChunk, TaskId};
use mcp_egress::{
    ConnectRequest, Connector, Decider, EgressProxy, Outcome, ProxyContext, ProxySettings,
    Rejected, Resolver, Verdict, ungranted_internal,
};
use mcp_policy::{AddressInput, Destination, NetworkInput, PolicyInput};
use mcp_sandbox::{EgressBinding, RunOutcome, RunSpec, SandboxError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::gateway::Gateway;
use crate::plan::Caller;
use crate::record::DecisionEntry;
use registry::TaskEgress;

impl Gateway {
    /// Replaces the binary bound into restricted sandboxes as the egress
    /// forwarder (default: this executable).
    pub fn set_egress_forwarder(&self, path: PathBuf) {
        registry::replace(&self.egress.forwarder, path);
    }

    /// Replaces the resolver of egress destinations (default: the system
    /// resolver). Tests pin names to local addresses with
    /// `mcp_egress::StaticResolver`.
    pub fn set_egress_resolver(&self, resolver: Arc<dyn Resolver>) {
        registry::replace(&self.egress.resolver, resolver);
    }

    /// Replaces what opens the egress proxy's upstream connections
    /// (default: TCP to the vetted address). Tests send every vetted
    /// address to a local server, so that no connection leaves the host.
    pub fn set_egress_connector(&self, connector: Arc<dyn Connector>) {
        registry::replace(&self.egress.connector, connector);
    }

    /// Runs `spec` in the sandbox; a restricted task first gets its egress
    /// proxy, which is stopped (its connections dropped, its socket
    /// removed) when the run ends.
    pub(crate) async fn run_sandbox(
        self: &Arc<Self>,
        spec: RunSpec,
        gate: Option<crate::worker::Gate>,
        on_output: &(dyn Fn(OutputChunk) + Send + Sync),
        cancel: CancellationToken,
    ) -> Result<Option<RunOutcome>, SandboxError> {
        let registered = self.egress.take(spec.task_id);
        if spec.network != NetworkAccess::Restricted {
            return match gate {
                Some(g) => self.sandbox.run_gated(spec, g, on_output, cancel).await,
                None => self.sandbox.run(spec, on_output, cancel).await.map(Some),
            };
        }
        // The proxy is bound for a stored task only.
        if let Some(g) = gate
            && !g.await
        {
            return Ok(None);
        }
        let Some(task) = registered else {
            // Fail closed: without its decision context a task gets no proxy.
            return Err(SandboxError::Unsupported {
                what: "restricted network access for a task started without its command decision"
                    .to_owned(),
            });
        };
        let socket = self.sandbox.egress_socket_path(spec.task_id);
        // A leftover of a crashed run would make the bind fail.
        let _ = tokio::fs::remove_file(&socket).await;
        let forwarder = registry::current(&self.egress.forwarder);
        let resolver = registry::current(&self.egress.resolver);
        let connector = registry::current(&self.egress.connector);
        let decider = Arc::new(GatewayDecider {
            gateway: self.clone(),
            task_id: spec.task_id,
            task: task.clone(),
        });
        let proxy = EgressProxy::bind(
            &socket,
            decider,
            resolver,
            connector,
            ProxyContext {
                task_id: spec.task_id.to_string(),
                principal: task.caller.principal.id.clone(),
            },
            ProxySettings::default(),
        )
        .map_err(|e| SandboxError::Spawn {
            source: std::io::Error::other(e),
        })?;
        let stop = CancellationToken::new();
        let served = tokio::spawn(proxy.serve(stop.clone()));
        let binding = EgressBinding {
            socket: socket.clone(),
            forwarder,
        };
        let outcome = self
            .sandbox
            .run_with_egress(spec, Some(binding), on_output, cancel)
            .await;
        stop.cancel();
        // `serve` removes the socket once it stopped; it is only left
        // behind if the proxy task panicked.
        if served.await.is_err() {
            let _ = tokio::fs::remove_file(&socket).await;
        }
        outcome.map(Some)
    }
}

/// Decides one task's connections for its proxy.
#[derive(Debug)]
struct GatewayDecider {
    gateway: Arc<Gateway>,
    task_id: TaskId,
    task: TaskEgress,
}

impl GatewayDecider {
    /// A caller for one connection: the task's principal, a request id of
    /// its own (each decision is its own log entry).
    fn caller(&self) -> Caller {
        Caller::new(
            self.task.caller.principal.clone(),
            self.task.caller.source.clone(),
        )
    }
}

/// Whether an obligation entry names this destination: the exact host, or
/// `*.suffix` for exactly one more label (as the policy's host globs); the
/// port when given; the protocol.
pub(crate) fn destination_matches(d: &Destination, host: &str, port: u16, protocol: &str) -> bool {
    let host_ok = match d.host.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .and_then(|h| h.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => d.host.eq_ignore_ascii_case(host),
    };
    host_ok && d.port.is_none_or(|p| p == port) && d.protocol == protocol
}

impl GatewayDecider {
    /// Writes a connection's decision to the decision log, under the task.
    async fn store(
        &self,
        caller: &Caller,
        req: &ConnectRequest,
        decision: &mcp_core::Decision,
        details: &mcp_store::DecisionDetails,
    ) -> Result<(), crate::error::GatewayError> {
        let summary = format!(
            "{} {}:{} via {}",
            req.protocol.as_str(),
            req.host,
            req.port,
            req.via.as_str()
        );
        let entry = DecisionEntry {
            caller,
            kind: "network",
            summary: &summary,
            decision,
            task_id: Some(self.task_id),
        };
        self.gateway.record_decision(entry, details).await
    }
}

/// The addresses a network decision's `network` obligation names for this
/// port and protocol: entries whose `host` is an address literal (a name
/// names no address).
pub(crate) fn granted_addresses(list: &[Destination], port: u16, protocol: &str) -> Vec<IpAddr> {
    list.iter()
        .filter(|d| d.port.is_none_or(|p| p == port) && d.protocol == protocol)
        .filter_map(|d| {
            let host = d.host.as_str();
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            bare.parse::<IpAddr>().ok()
        })
        .collect()
}

/// The policy input for `req`: its addresses as the proxy classified them.
fn network_input(req: &ConnectRequest) -> NetworkInput {
    NetworkInput {
        host: req.host.clone(),
        port: req.port,
        protocol: req.protocol.as_str().to_owned(),
        resolved_ips: req.resolved.iter().map(|(ip, _)| ip.to_string()).collect(),
        addresses: req
            .resolved
            .iter()
            .map(|(ip, c)| AddressInput {
                ip: ip.to_string(),
                class: c.class.as_str().to_owned(),
                internal: c.is_internal(),
                form: c.form(),
            })
            .collect(),
    }
}

#[async_trait]
impl Decider for GatewayDecider {
    async fn decide(&self, req: &ConnectRequest) -> Verdict {
        let caller = self.caller();
        let protocol = req.protocol.as_str();
        let input = PolicyInput::network(
            &caller.principal,
            network_input(req),
            &self.gateway.context(&caller),
        );
        let (mut decision, details, obligations) = self.gateway.decide_typed(input);
        // This connection's own `network` obligation names the addresses it
        // may reach; an internal one is reached only through it.
        let named = obligations
            .network
            .as_deref()
            .map(|list| granted_addresses(list, req.port, protocol));
        let private = named.clone().unwrap_or_default();
        if decision.allow {
            let mut refused = Vec::new();
            if let Some(list) = &self.task.destinations
                && !list
                    .iter()
                    .any(|d| destination_matches(d, &req.host, req.port, protocol))
            {
                refused.push(format!(
                    "destination {}:{}/{protocol} is not in the task's network obligation",
                    req.host, req.port
                ));
            }
            if let Some(named) = &named {
                refused.extend(req.resolved.iter().filter(|(ip, _)| !named.contains(ip)).map(
                    |(ip, _)| {
                        format!(
                            "address {ip} of destination {:?} is not in the decision's network obligation",
                            req.host
                        )
                    },
                ));
            }
            // The proxy's guard, applied before storing so that the log
            // says what the proxy will do.
            refused.extend(ungranted_internal(req, &private));
            if !refused.is_empty() {
                decision.allow = false;
                decision.deny_reasons = refused;
            }
        }
        let allowed = decision.allow;
        if let Err(e) = self.store(&caller, req, &decision, &details).await {
            // Nothing is opened without a stored decision.
            warn!(error = %e, task_id = %self.task_id, "cannot store network decision; refusing");
            return Verdict::deny("the decision could not be recorded");
        }
        info!(
            task_id = %self.task_id,
            request_id = %caller.request_id,
            host = %req.host,
            port = req.port,
            allow = allowed,
            private = ?private,
            "network decision"
        );
        Verdict {
            allow: allowed,
            private: if allowed { private } else { Vec::new() },
            reasons: decision.deny_reasons,
        }
    }

    async fn record(&self, req: &ConnectRequest, outcome: &Outcome) {
        if outcome.decided() {
            // Already in the decision log (decide stores before answering).
            return;
        }
        // Nothing was decided (the name did not resolve), or the proxy's
        // guard overruled the stored decision: logged as a denial.
        let caller = self.caller();
        let decision = self.denial(outcome.reasons());
        let details = mcp_store::DecisionDetails::default();
        if let Err(e) = self.store(&caller, req, &decision, &details).await {
            warn!(error = %e, task_id = %self.task_id, "cannot store network refusal");
        }
    }

    async fn reject(&self, rejected: &Rejected) {
        let caller = self.caller();
        let via = rejected.via.map_or("http", |v| v.as_str());
        let summary = match &rejected.target {
            Some(t) => format!("rejected {via} request for {t}"),
            None => format!("rejected {via} request"),
        };
        let decision = self.denial(vec![rejected.reason.clone()]);
        let details = mcp_store::DecisionDetails::default();
        let entry = DecisionEntry {
            caller: &caller,
            kind: "network",
            summary: &summary,
            decision: &decision,
            task_id: Some(self.task_id),
        };
        if let Err(e) = self.gateway.record_decision(entry, &details).await {
            warn!(error = %e, task_id = %self.task_id, "cannot store rejected egress request");
        }
    }
}

impl GatewayDecider {
    /// A denial for the decision log with `reasons`, under the current
    /// policy revision.
    fn denial(&self, reasons: Vec<String>) -> mcp_core::Decision {
        mcp_core::Decision {
            allow: false,
            deny_reasons: reasons,
            warnings: Vec::new(),
            obligations: mcp_core::Obligations::default(),
            policy_revision: self.gateway.policy_revision(),
        }
    }
}
