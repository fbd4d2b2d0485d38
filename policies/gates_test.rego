# Tests for gates.rego: each gate, in order, against a small tenant table.
package mcp_test

# Rules are referenced as data.mcp.* rather than through `import data.mcp`
# (see main_test.rego).

tenants := {
	"acme": {
		"enabled": true,
		"projects": {"default": {"enabled": true}, "web": {"enabled": true}, "legacy": {"enabled": false}},
		"principals": {
			"alice": {"active": true, "grants": [
				{"tools": ["command:*"], "scope": "read", "expires": null},
				{"tools": ["file:reports/*"], "scope": "write", "expires": "2030-01-01T00:00:00Z"},
				{"tools": ["command:python3"], "scope": "write", "expires": null, "environment": {"env": ["dev", "staging"]}},
				{"tools": ["mcp_tool:github/*"], "scope": "admin", "expires": "2024-01-01T00:00:00Z"},
			]},
			"bob": {"active": false, "grants": [{"tools": ["*"], "scope": "admin", "expires": null}]},
		},
		"approval": {"scopes": ["write", "admin"], "roles": ["security-lead"]},
		"network": {"allow": []},
	},
	"frozen": {"enabled": false, "projects": {}, "principals": {}},
}

command_scopes := {"ls": "read", "cat": "read", "python3": "write"}

principal(id, tenant) := {"id": id, "tenant": tenant, "roles": [], "auth": "api_key"}

ctx(env) := {"time": "2025-06-01T12:00:00Z", "source": null, "request_id": "req-g", "environment": env}

cmd_input(id, tenant, name, env) := {
	"principal": principal(id, tenant),
	"request": {
		"kind": "command",
		"command": {"name": name, "resolved_path": concat("", ["/usr/bin/", name]), "args": [], "env_names": [], "cwd": "", "timeout_secs": 30},
		"sandbox": {"network": "none", "limits": {"cpu_limit": 0, "memory_bytes": 0, "pids": 0, "io_weight": 0}, "rw_paths": [], "ro_paths": [], "denied_paths": []},
		"metadata": {},
	},
	"context": ctx(env),
}

file_input(id, path, op) := {
	"principal": principal(id, "acme"),
	"request": {"kind": "file", "file": {"path": path, "op": op, "mode": 420, "recursive": false}, "metadata": {}},
	"context": ctx({}),
}

decide(inp) := d if {
	d := data.mcp.decision with input as inp with data.tenants as tenants with data.command_scopes as command_scopes
}

only_reason(inp, reason) if {
	d := decide(inp)
	d.allow == false
	d.deny_reasons == [reason]
}

test_gate_tenant_unknown if {
	only_reason(cmd_input("alice", "nowhere", "ls", {}), `gate tenant: tenant "nowhere" is not known`)
}

test_gate_tenant_disabled if {
	only_reason(cmd_input("alice", "frozen", "ls", {}), `gate tenant: tenant "frozen" is disabled`)
}

test_gate_project_unknown_and_disabled if {
	unknown := object.union(cmd_input("alice", "acme", "ls", {}), {"request": {"metadata": {"project": "mars"}}})
	only_reason(unknown, `gate project: project "mars" is not known in tenant "acme"`)
	disabled := object.union(cmd_input("alice", "acme", "ls", {}), {"request": {"metadata": {"project": "legacy"}}})
	only_reason(disabled, `gate project: project "legacy" is disabled`)
	known := object.union(cmd_input("alice", "acme", "ls", {}), {"request": {"metadata": {"project": "web"}}})
	decide(known).allow == true
}

test_gate_principal_unknown_and_inactive if {
	only_reason(cmd_input("mallory", "acme", "ls", {}), `gate principal: principal "mallory" is not known in tenant "acme"`)
	only_reason(cmd_input("bob", "acme", "ls", {}), `gate principal: principal "bob" is not active`)
}

test_read_grant_allows_a_read_command_without_approval if {
	d := decide(cmd_input("alice", "acme", "ls", {}))
	d.allow == true
	d.obligations == {"profile": "default"}
}

test_gate_grant_no_matching_grant if {
	only_reason(file_input("alice", "secrets/x.txt", "read"), `gate grant: principal "alice" has no grant for "file:secrets/x.txt"`)
}

test_gate_grant_expired if {
	inp := {
		"principal": principal("alice", "acme"),
		"request": {"kind": "mcp_tool", "mcp_tool": {"server": "github", "name": "create_issue", "arguments": {}}, "metadata": {}},
		"context": ctx({}),
	}
	only_reason(inp, `gate grant: every grant of principal "alice" for "mcp_tool:github/create_issue" has expired`)
}

test_gate_grant_is_judged_at_the_request_time if {
	later := object.union(file_input("alice", "reports/q1.csv", "read"), {"context": {"time": "2031-01-01T00:00:00Z"}})
	only_reason(later, `gate grant: every grant of principal "alice" for "file:reports/q1.csv" has expired`)
	no_time := json.remove(file_input("alice", "reports/q1.csv", "read"), ["context/time"])
	d := decide(no_time)
	d.allow == false
}

test_gate_grant_insufficient_scope if {
	# python3 needs write; outside dev/staging only the read grant is live.
	d := decide(cmd_input("alice", "acme", "python3", {"env": "prod"}))
	d.allow == false
	d.deny_reasons == [`gate environment: no grant of principal "alice" for "command:python3" applies in environment {"env": "prod"}`]
	only_reason(file_input("alice", "other/x", "write"), `gate grant: principal "alice" has no grant for "file:other/x"`)
}

test_gate_grant_scope_too_low if {
	tenants2 := {"acme": object.union(tenants.acme, {"principals": {"alice": {"active": true, "grants": [
		{"tools": ["command:*"], "scope": "read", "expires": null},
		{"tools": ["command:python3"], "scope": "read", "expires": null},
	]}}})}
	d := data.mcp.decision with input as cmd_input("alice", "acme", "python3", {"env": "dev"}) with data.tenants as tenants2 with data.command_scopes as command_scopes
	d.allow == false
	d.deny_reasons == [`gate grant: "command:python3" needs scope "write"; principal "alice" holds ["read", "read"]`]
}

test_write_scope_needs_approval if {
	d := decide(cmd_input("alice", "acme", "python3", {"env": "dev"}))
	d.allow == true
	d.obligations.profile == "default"
	reason := `"command:python3" with scope "write" needs approval in tenant "acme"`
	d.obligations.require_approval == {
		"roles": ["security-lead"],
		"reason": reason,
		"requirements": [{"roles": ["security-lead"], "reason": reason}],
	}
	f := decide(file_input("alice", "reports/q1.csv", "write"))
	f.obligations.require_approval.roles == ["security-lead"]
	r := decide(file_input("alice", "reports/q1.csv", "read"))
	r.allow == true
	not r.obligations.require_approval
}

test_unlisted_commands_need_write_scope if {
	d := decide(cmd_input("alice", "acme", "wc", {}))
	d.allow == false
	d.deny_reasons == [`gate grant: "command:wc" needs scope "write"; principal "alice" holds ["read"]`]
}

test_only_the_first_failing_gate_is_reported if {
	# Unknown principal and a command off the allowlist: the gate reason
	# names the principal only; command.rego adds its own reason.
	d := decide(cmd_input("mallory", "acme", "rm", {}))
	d.allow == false
	d.deny_reasons == [
		`command "rm" is not in the allowed command list`,
		`gate principal: principal "mallory" is not known in tenant "acme"`,
	]
}

test_shipped_data_keeps_the_anonymous_principal_working if {
	d := data.mcp.decision with input as cmd_input("anonymous", "default", "ls", {})
	d.allow == true
	d.obligations == {"profile": "default"}
	w := data.mcp.decision with input as object.union(file_input("anonymous", "notes/a.txt", "delete"), {"principal": {"tenant": "default"}})
	w.allow == true
	w.obligations == {"profile": "default"}
}

test_shipped_data_refuses_other_principals if {
	d := data.mcp.decision with input as cmd_input("alice", "default", "ls", {})
	d.deny_reasons == [`gate principal: principal "alice" is not known in tenant "default"`]
}

test_tool_patterns_match_exactly_by_prefix_or_as_globs if {
	data.mcp.tool_matches("command:ls", "command:ls")
	not data.mcp.tool_matches("command:ls", "command:lsblk")
	data.mcp.tool_matches("command:*", "command:ls")
	data.mcp.tool_matches("file:reports/*", "file:reports/2025/q1.csv")
	not data.mcp.tool_matches("file:reports/*", "file:secrets/key")
	# Not a plain prefix: matched as a glob.
	data.mcp.tool_matches("command:l?", "command:ls")
	not data.mcp.tool_matches("command:l?", "command:cat")
	data.mcp.tool_matches("file:[ab]*", "file:b.txt")
	not data.mcp.tool_matches("file:[ab]*", "file:c.txt")
	data.mcp.tool_matches("mcp_tool:{gh,gl}/*", "mcp_tool:gl/create_issue")
	# An escaped star is a literal star, not a prefix.
	data.mcp.tool_matches(`file:a\*`, "file:a*")
	not data.mcp.tool_matches(`file:a\*`, "file:abc")
}
