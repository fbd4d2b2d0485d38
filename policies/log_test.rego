# Tests for log.rego: which parts of the input the decision log masks.
package mcp_test

test_secret_looking_metadata_keys_are_masked if {
	m := data.mcp.log.mask with input as {"request": {"kind": "command", "metadata": {"ticket": "OPS-1", "api_key": "x", "DB_PASSWORD": "y", "a/b~token": "z"}}}
	m == {"/request/metadata/api_key", "/request/metadata/DB_PASSWORD", "/request/metadata/a~1b~0token"}
}

test_mcp_tool_arguments_are_masked if {
	m := data.mcp.log.mask with input as {"request": {"kind": "mcp_tool", "mcp_tool": {"server": "s", "name": "n", "arguments": {"body": "hi"}}, "metadata": {}}}
	m == {"/request/mcp_tool/arguments"}
}

test_ordinary_commands_are_kept_whole if {
	m := data.mcp.log.mask with input as {"request": {"kind": "command", "metadata": {"ticket": "OPS-1"}}}
	m == set()
}
