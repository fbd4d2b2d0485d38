use std::fmt;

use serde::{Deserialize, Serialize};

/// What the policy answered for one request. A denial is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allow: bool,
    /// Why the request was denied; empty when allowed.
    pub deny_reasons: Vec<String>,
    pub warnings: Vec<String>,
    pub obligations: Obligations,
    /// Identifies the compiled policy set that produced this decision.
    pub policy_revision: String,
}

impl Decision {
    /// A denial that did not come from the policy itself (engine failure,
    /// unknown obligation): the gateway fails closed with these reasons.
    pub fn fail_closed(reason: impl Into<String>, policy_revision: impl Into<String>) -> Self {
        Self {
            allow: false,
            deny_reasons: vec![reason.into()],
            warnings: Vec::new(),
            obligations: Obligations::default(),
            policy_revision: policy_revision.into(),
        }
    }
}

/// Duties the policy attaches to an allow. The gateway enforces each one it
/// understands and denies when the policy sets one it does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Obligations {
    /// The sandbox profile to run the command in; `None` means `default`.
    pub profile: Option<String>,
    /// Obligation names the gateway did not recognise. Non-empty forces a deny.
    pub unknown: Vec<String>,
}

/// The obligations a policy may attach to an allow. The gateway enforces the
/// ones it was built for (`mcp_policy::EngineOptions::enforced`); a known
/// obligation it does not enforce is treated like an unknown one and denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObligationKind {
    /// `profile`: the sandbox profile to run in.
    Profile,
    /// `limits`: clamps on the sandbox's resource limits and timeout.
    Limits,
    /// `require_approval`: a human with one of `roles` must approve first.
    RequireApproval,
    /// `redact`: extra regular expressions to redact from output and logs.
    Redact,
    /// `network`: the only destinations the sandbox may reach.
    Network,
}

impl ObligationKind {
    pub const ALL: [ObligationKind; 5] = [
        ObligationKind::Profile,
        ObligationKind::Limits,
        ObligationKind::RequireApproval,
        ObligationKind::Redact,
        ObligationKind::Network,
    ];

    /// The key in `obligations`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObligationKind::Profile => "profile",
            ObligationKind::Limits => "limits",
            ObligationKind::RequireApproval => "require_approval",
            ObligationKind::Redact => "redact",
            ObligationKind::Network => "network",
        }
    }

    /// The obligation named by `key`, if it is one.
    pub fn from_key(key: &str) -> Option<ObligationKind> {
        ObligationKind::ALL.into_iter().find(|k| k.as_str() == key)
    }
}

impl fmt::Display for ObligationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `obligations.limits`: upper bounds the sandbox must apply on top of what
/// the request asked; absent fields do not clamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsObligation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// `obligations.require_approval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalObligation {
    /// Every role that appears in a requirement (without requirements: any
    /// one of these roles may approve).
    pub roles: Vec<String>,
    /// Shown to the approver.
    pub reason: String,
    /// Each policy's demand, merged by `main.rego`: the approver must hold
    /// one role of every requirement (`approve.rego` decides). Empty for an
    /// obligation written before requirements existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<ApprovalRequirement>,
}

impl ApprovalObligation {
    /// Whether every role of every requirement is among `roles`, so that
    /// what the approver is shown and what is checked agree. The policy
    /// crate refuses a decision whose obligation breaks this.
    pub fn requirements_within_roles(&self) -> bool {
        self.requirements
            .iter()
            .all(|r| r.roles.iter().all(|role| self.roles.contains(role)))
    }
}

/// One policy's approval demand within [`ApprovalObligation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequirement {
    /// Any one of these roles meets this requirement; never empty.
    pub roles: Vec<String>,
    pub reason: String,
}

/// One entry of `obligations.network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp` (the default) or `udp`.
    pub protocol: String,
}

/// Every obligation of a decision, typed. `unknown` holds the keys that are
/// not obligations at all (a typo, or one from a newer policy set). Parsed
/// once, from the policy's answer (`mcp-policy`); turned into JSON only at
/// the store's boundary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObligationSet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsObligation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_approval: Option<ApprovalObligation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Vec<Destination>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

impl ObligationSet {
    /// The known obligations this set actually carries, in key order.
    /// An empty `redact` list is no obligation; an empty `network` list is
    /// one (no destination at all).
    pub fn present(&self) -> Vec<ObligationKind> {
        let mut out = Vec::new();
        if self.profile.is_some() {
            out.push(ObligationKind::Profile);
        }
        if self.limits.is_some() {
            out.push(ObligationKind::Limits);
        }
        if self.require_approval.is_some() {
            out.push(ObligationKind::RequireApproval);
        }
        if !self.redact.is_empty() {
            out.push(ObligationKind::Redact);
        }
        if self.network.is_some() {
            out.push(ObligationKind::Network);
        }
        out
    }
}
