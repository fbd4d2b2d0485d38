# Ordered gates over data.json: who may do what, where, and with whose
# approval. Each gate runs only when every gate before it passed, and a
# failure denies with a reason that starts with the gate's name:
#
#   1. tenant     the principal's tenant is known and enabled
#   2. project    the request's project (metadata "project", else "default")
#                 is known and enabled in that tenant
#   3. principal  the principal is known in the tenant and active
#   4. grant      a grant of the principal matches the request's tool, has
#                 not expired at the request's time, and holds the scope the
#                 tool needs (read < write < admin)
#   5. environment  one of those grants applies to the deployment's
#                 environment tags (input.context.environment)
#   6. approval   not a denial: when the tenant lists the needed scope in
#                 approval.scopes, an entry of `approvals` (main.rego turns
#                 them into the obligation require_approval)
#
# data.json layout (see docs/policy/README.md):
#   tenants.<tenant>.enabled, .projects.<project>.enabled,
#   .principals.<id>.active, .principals.<id>.grants[] =
#     {"tools": [glob], "scope": "read|write|admin", "expires": RFC 3339|null,
#      "environment": {"<tag>": ["<allowed value>", ...]}}   (optional)
#   .approval = {"scopes": [...], "roles": [...]}
#   command_scopes.<binary> and mcp_tool_scopes."<server>/<tool>": the scope
#   a tool needs; anything not listed needs "write".
package mcp

scope_rank := {"read": 1, "write": 2, "admin": 3}

gate_tenant := data.tenants[input.principal.tenant]

default gate_project_name := "default"

gate_project_name := input.request.metadata.project

gate_project := gate_tenant.projects[gate_project_name]

gate_principal := gate_tenant.principals[input.principal.id]

# What the request touches, as the string grants are matched against:
# command:<binary>, file:<path>, network:<host>:<port>, mcp_tool:<server>/<name>.
request_tool := sprintf("command:%s", [command_name]) if input.request.kind == "command"

request_tool := sprintf("file:%s", [input.request.file.path]) if input.request.kind == "file"

request_tool := sprintf("network:%s:%d", [input.request.network.host, input.request.network.port]) if {
	input.request.kind == "network"
}

request_tool := sprintf("mcp_tool:%s/%s", [input.request.mcp_tool.server, input.request.mcp_tool.name]) if {
	input.request.kind == "mcp_tool"
}

# The binary that would run when it resolved into a system directory, else
# the name as written.
command_name := binary

command_name := input.request.command.name if not binary

# The scope the request needs.
required_scope := object.get(data.command_scopes, command_name, "write") if input.request.kind == "command"

required_scope := "read" if {
	input.request.kind == "file"
	input.request.file.op == "read"
}

required_scope := "write" if {
	input.request.kind == "file"
	input.request.file.op != "read"
}

required_scope := "write" if input.request.kind == "network"

required_scope := object.get(
	data.mcp_tool_scopes,
	sprintf("%s/%s", [input.request.mcp_tool.server, input.request.mcp_tool.name]),
	"write",
) if input.request.kind == "mcp_tool"

matching_grants contains i if {
	some i, grant in gate_principal.grants
	some pattern in grant.tools
	tool_matches(pattern, request_tool)
}

# A grant's tool pattern is a glob ("*" also matches "/"). The common forms,
# an exact name and a prefix followed by one "*" ("command:*"), are matched
# with string operations: a glob is compiled into a regular expression on
# every use, which costs more than the rest of a decision.
tool_matches(pattern, tool) := true if {
	pattern == tool
} else := startswith(tool, trim_suffix(pattern, "*")) if {
	prefix_glob(pattern)
} else := glob.match(pattern, null, tool)

# A literal followed by one "*": removing every glob metacharacter from
# the literal leaves it unchanged.
prefix_glob(pattern) if {
	endswith(pattern, "*")
	prefix := trim_suffix(pattern, "*")
	strings.replace_n(glob_metacharacters, prefix) == prefix
}

glob_metacharacters := {"*": "", "?": "", "[": "", "]": "", "{": "", "}": "", "\\": ""}

# A grant without expiry, or one that expires after the request was made.
# The request's own time is used (not the clock), so a replay judges a past
# request as of its time; a request without a valid time matches no
# expiring grant.
live_grants contains i if {
	some i in matching_grants
	grant_live(gate_principal.grants[i])
}

grant_live(grant) if object.get(grant, "expires", null) == null

grant_live(grant) if {
	is_string(grant.expires)
	time.parse_rfc3339_ns(grant.expires) > time.parse_rfc3339_ns(input.context.time)
}

sufficient_grants contains i if {
	some i in live_grants
	scope_rank[gate_principal.grants[i].scope] >= scope_rank[required_scope]
}

applicable_grants contains i if {
	some i in sufficient_grants
	environment_matches(object.get(gate_principal.grants[i], "environment", {}))
}

environment_matches(constraints) if {
	every tag, allowed in constraints {
		object.get(object.get(input.context, "environment", {}), tag, null) in allowed
	}
}

held_scopes := sort([gate_principal.grants[i].scope | some i in live_grants])

# Every gate passes: one pass over the principal's grants, which spares
# the common (allowed) request the grant sets and the chain below. It only
# decides that nothing fails; the chain alone says what failed.
gates_pass if {
	gate_tenant.enabled == true
	gate_project.enabled == true
	gate_principal.active == true
	some grant in gate_principal.grants
	grant_applies(grant)
}

grant_applies(grant) if {
	some pattern in grant.tools
	tool_matches(pattern, request_tool)
	grant_live(grant)
	scope_rank[grant.scope] >= scope_rank[required_scope]
	environment_matches(object.get(grant, "environment", {}))
}

# The first gate that fails; undefined when every gate passes.
gate_failure := first_gate_failure if not gates_pass

first_gate_failure := sprintf("gate tenant: tenant %q is not known", [input.principal.tenant]) if {
	not gate_tenant
} else := sprintf("gate tenant: tenant %q is disabled", [input.principal.tenant]) if {
	gate_tenant.enabled != true
} else := sprintf("gate project: project %q is not known in tenant %q", [gate_project_name, input.principal.tenant]) if {
	not gate_project
} else := sprintf("gate project: project %q is disabled", [gate_project_name]) if {
	gate_project.enabled != true
} else := sprintf("gate principal: principal %q is not known in tenant %q", [input.principal.id, input.principal.tenant]) if {
	not gate_principal
} else := sprintf("gate principal: principal %q is not active", [input.principal.id]) if {
	gate_principal.active != true
} else := sprintf("gate grant: request kind %q names no tool", [object.get(input.request, "kind", "")]) if {
	not request_tool
} else := sprintf("gate grant: principal %q has no grant for %q", [input.principal.id, request_tool]) if {
	count(matching_grants) == 0
} else := sprintf("gate grant: every grant of principal %q for %q has expired", [input.principal.id, request_tool]) if {
	count(live_grants) == 0
} else := sprintf("gate grant: %q needs scope %q; principal %q holds %v", [request_tool, required_scope, input.principal.id, held_scopes]) if {
	count(sufficient_grants) == 0
} else := sprintf("gate environment: no grant of principal %q for %q applies in environment %v", [input.principal.id, request_tool, object.get(input.context, "environment", {})]) if {
	count(applicable_grants) == 0
}

# Kinds no policy handles are refused by main.rego alone.
deny contains gate_failure if request_kind in handled_kinds

# Gate 6: approval. Not a denial: the gateway must obtain it before running.
# A requirement among the others (main.rego merges them). A tenant that
# lists scopes but no roles gets an empty role list, which the gateway
# refuses as a malformed obligation: it fails closed.
approvals contains {
	"roles": object.get(gate_tenant.approval, "roles", []),
	"reason": sprintf("%q with scope %q needs approval in tenant %q", [request_tool, required_scope, input.principal.tenant]),
} if {
	not gate_failure
	required_scope in object.get(gate_tenant, "approval", {"scopes": []}).scopes
}
