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
