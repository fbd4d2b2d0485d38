//! The decision step: the policy input's context, the evaluation (span
//! `policy.eval`) with what the decision log keeps of it, and fail-closed
//! denials. The obligations stay typed (`ObligationSet`) from here to the
//! sandbox; only the store turns them into JSON.

use mcp_core::{Decision, ObligationSet, now, rfc3339};
use mcp_policy::{PolicyInput, RequestContext};
use mcp_store::DecisionDetails;
use tracing::{info_span, warn};

use crate::gateway::Gateway;
use crate::plan::Caller;

impl Gateway {
    /// The request context the policy sees (`input.context`).
    pub(crate) fn context(&self, caller: &Caller) -> RequestContext {
        RequestContext {
            time: rfc3339(now()),
            source: caller.source.clone(),
            request_id: caller.request_id.to_string(),
        }
    }

    /// Evaluates `input` with the active policy set (and the shadow set,
    /// if configured) and returns the decision with what the decision log
    /// keeps of it: the masked input, latency, profile, obligations.
    pub(crate) fn decide(&self, input: PolicyInput) -> (Decision, DecisionDetails) {
        let (decision, details, _) = self.decide_typed(input);
        (decision, details)
    }

    /// [`Gateway::decide`], with the decision's obligations apart as well
    /// (the egress proxy reads a connection's private grants from them);
    /// empty when the decision failed closed. (`details.obligations` keeps
    /// what the policy said for the decision log either way.)
    pub(crate) fn decide_typed(
        &self,
        input: PolicyInput,
    ) -> (Decision, DecisionDetails, ObligationSet) {
        let span = info_span!("policy.eval", revision = tracing::field::Empty);
        let _entered = span.enter();
        let input = input
            .with_environment(&self.settings.environment)
            .with_trace_id(crate::trace::current_traceparent());
        let ev = self.policy.decide(&input);
        self.metrics.observe_policy_eval(ev.latency);
        span.record("revision", ev.revision.as_str());
        let details = DecisionDetails {
            input: Some(ev.logged_input(&input)),
            latency_us: u64::try_from(ev.latency.as_micros()).unwrap_or(u64::MAX),
            profile: ev.obligations.profile.clone(),
            obligations: ev.obligations.clone(),
            warnings: ev.decision.warnings.clone(),
        };
        let decision = ev.decision;
        if decision.allow && !decision.obligations.unknown.is_empty() {
            // An obligation we cannot enforce makes the allow meaningless.
            return (
                self.fail_closed(format!(
                    "policy set obligations the gateway does not understand: {}",
                    decision.obligations.unknown.join(", ")
                )),
                details,
                ObligationSet::default(),
            );
        }
        (decision, details, ev.obligations)
    }

    /// A denial that did not come from the policy (logged as such).
    pub(crate) fn fail_closed(&self, reason: String) -> Decision {
        warn!(reason = %reason, "failing closed");
        Decision::fail_closed(reason, self.policy.revision())
    }
}
