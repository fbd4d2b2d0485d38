# Tests for main.rego: decision assembly and deny by default.
package mcp_test

# Rules are referenced as data.mcp.* rather than through `import data.mcp`:
# regorus 0.14 evaluates an imported reference to a rule that depends on a
# `default` rule as undefined when the package spans several files.

test_unknown_request_kind_is_denied if {
	d := data.mcp.decision with input as {"request": {"kind": "teleport"}}
	d.allow == false
	d.deny_reasons == [`request kind "teleport" is not handled`]
}

test_missing_input_is_denied if {
	d := data.mcp.decision with input as {}
	d.allow == false
	d.deny_reasons == [`request kind "" is not handled`]
}

test_command_kind_without_command_is_denied if {
	d := data.mcp.decision with input as {"request": {"kind": "command", "command": null, "sandbox": null}}
	d.allow == false
	"command request has no command" in d.deny_reasons
}

test_file_kind_without_file_is_denied if {
	d := data.mcp.decision with input as {"request": {"kind": "file"}}
	d.allow == false
	"file request has no file" in d.deny_reasons
}

test_mcp_tool_kind_without_tool_is_denied if {
	d := data.mcp.decision with input as {"request": {"kind": "mcp_tool"}}
	d.allow == false
	"mcp_tool request has no tool" in d.deny_reasons
}

test_decision_has_the_documented_shape if {
	d := data.mcp.decision with input as {"request": {"kind": "file", "file": {"path": "a.txt", "op": "read"}}}
	object.keys(d) == {"allow", "deny_reasons", "warnings", "obligations"}
	is_boolean(d.allow)
	is_array(d.deny_reasons)
	is_array(d.warnings)
	is_object(d.obligations)
}

# Obligations merged from the partial sets other files add to (see
# "Extending the policies" in policies/README.md).

test_approval_requirements_are_all_kept if {
	a := data.mcp.approval_obligation with data.mcp.approvals as {
		{"roles": ["ops"], "reason": "b: ops"},
		{"roles": ["lead", "security"], "reason": "a: security"},
	}
	a.require_approval.roles == ["lead", "ops", "security"]
	a.require_approval.reason == "a: security; b: ops"
	count(a.require_approval.requirements) == 2
	{"roles": ["ops"], "reason": "b: ops"} in a.require_approval.requirements
}

test_no_approval_requirement_no_obligation if {
	data.mcp.approval_obligation == {} with data.mcp.approvals as set()
}

test_limit_caps_keep_the_lowest_of_each_field if {
	l := data.mcp.limits_obligation with data.mcp.limit_caps as {
		{"timeout_secs": 60, "memory_bytes": 1024},
		{"timeout_secs": 30, "pids": 8},
	}
	l == {"limits": {"timeout_secs": 30, "memory_bytes": 1024, "pids": 8}}
}

test_redactions_are_all_kept if {
	r := data.mcp.redact_obligation with data.mcp.redactions as {"b[0-9]+", "a[0-9]+"}
	r == {"redact": ["a[0-9]+", "b[0-9]+"]}
}

test_allowed_decision_carries_the_merged_obligations if {
	d := data.mcp.decision with input as {"request": {"kind": "file", "file": {"path": "a.txt", "op": "read"}}, "principal": {"id": "anonymous", "tenant": "default"}, "context": {"time": "2025-06-01T12:00:00Z"}}
		with data.mcp.limit_caps as {{"timeout_secs": 5}}
		with data.mcp.redactions as {"tok-[a-z]+"}
	d.allow == true
	d.obligations == {"profile": "default", "limits": {"timeout_secs": 5}, "redact": ["tok-[a-z]+"]}
}
