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

# Every allowed request runs in the default sandbox profile; gates.rego adds
# require_approval when the tenant wants a human to approve.
obligations := object.union({"profile": "default"}, approval_obligation) if allow

else := {}

approval_obligation := {"require_approval": approval} if approval

else := {}

decision := {
	"allow": allow,
	"deny_reasons": sort(deny),
	"warnings": sort(warn),
	"obligations": obligations,
}
