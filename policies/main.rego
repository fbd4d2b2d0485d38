# Decision assembly for mcp-security-gateway.
#
# The gateway evaluates data.mcp.decision once per request (see README.md for
# the input document). Deny by default: a request is allowed only when its
# kind is one these policies handle and no rule in any file of package mcp
# produced a deny reason. command.rego and file.rego add to `deny`.
package mcp

handled_kinds := {"command", "file"}

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

# Every allowed request runs in the default sandbox profile.
obligations := {"profile": "default"} if allow

else := {}

decision := {
	"allow": allow,
	"deny_reasons": sort(deny),
	"warnings": sort(warn),
	"obligations": obligations,
}
