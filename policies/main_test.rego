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
