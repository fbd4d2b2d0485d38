# Decision assembly for mcp-security-gateway.
#
# The gateway evaluates data.mcp.decision once per request (the input
# document is described in docs/policy/input.md). Deny by default: a request
# is allowed only when its kind is one these policies handle and no rule in
# any file of package mcp produced a deny reason. gates.rego (who may do
# what), command.rego, file.rego and network.rego add to `deny`.
package mcp

handled_kinds := {"command", "file", "network", "mcp_tool"}

default request_kind := ""

request_kind := input.request.kind

default allow := false

allow if {
	request_kind in handled_kinds
	count(deny) == 0
}

deny contains sprintf("request kind %q is not handled", [request_kind]) if {
	not request_kind in handled_kinds
}

deny contains "mcp_tool request has no tool" if {
	input.request.kind == "mcp_tool"
	not is_object(input.request.mcp_tool)
}

# Obligations compose. Any file of package mcp may add to these partial
# sets, and the merge below lets the strictest win; no file sets an
# obligation as a complete rule, which would conflict (and fail the decision
# closed) as soon as two files set it differently. See policies/README.md,
# "Extending the policies".
#
#   approvals contains {"roles": [...], "reason": "..."}
#       a human must approve; the approver must hold one role of EVERY
#       entry (require_approval.requirements), so one team's approval
#       requirement cannot be met by another team's approver alone
#   redactions contains "<regex>"     every pattern is redacted
#   limit_caps contains {"cpu_limit"?, "memory_bytes"?, "pids"?, "timeout_secs"?}
#       each field is capped at the lowest value any entry gives
#   network_obligations contains {"profile": ...} or {"network": [...]}
#       restricted network: command.rego picks the network-restricted
#       profile, network.rego a connection's private grant (the addresses
#       the egress proxy may open although they are internal)
#
# gates.rego adds the tenant's approval requirement (gate 6). The empty
# definitions below only declare the sets, so that main.rego compiles when
# no file adds to one of them.
approvals contains a if some a in []

redactions contains r if some r in []

limit_caps contains c if some c in []

network_obligations contains o if some o in []

obligations := object.union_n([
	{"profile": "default"},
	approval_obligation,
	redact_obligation,
	limits_obligation,
	object.union_n([o | some o in network_obligations]),
]) if allow

else := {}

approval_obligation := {"require_approval": {
	"roles": sort({role | some a in approvals; some role in a.roles}),
	"reason": concat("; ", sort({a.reason | some a in approvals})),
	"requirements": [{"roles": sort(a.roles), "reason": a.reason} | some a in approvals],
}} if count(approvals) > 0

else := {}

# A file written for the older single-rule form (`approval := {...}`)
# still takes effect, as one more requirement; two such files conflict and
# fail the decision closed.
approvals contains approval if approval

approval := a if some a in []

redact_obligation := {"redact": sort(redactions)} if count(redactions) > 0

else := {}

limit_fields := {"cpu_limit", "memory_bytes", "pids", "timeout_secs"}

limits_obligation := {"limits": {field: min(values) |
	some field in limit_fields
	values := [cap[field] | some cap in limit_caps; is_number(cap[field])]
	count(values) > 0
}} if count(limit_caps) > 0

else := {}

decision := {
	"allow": allow,
	"deny_reasons": sort(deny),
	"warnings": sort(warn),
	"obligations": obligations,
}
