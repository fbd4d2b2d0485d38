# What the decision log must not keep (OPA's system.log.mask).
#
# mask is a set of JSON pointers into the input document; the gateway
# replaces the values there with "<masked>" before storing the input. A "*"
# segment matches every key or index. After masking, the gateway also
# redacts strings that look like credentials (passwords, bearer tokens,
# cloud keys) and the policy's "redact" obligation patterns.
#
# Masked values cannot be replayed faithfully: `policy replay` counts the
# inputs that carry "<masked>".
package mcp.log

# Metadata values whose key names a secret.
mask contains sprintf("/request/metadata/%s", [pointer_escape(key)]) if {
	some key, _ in input.request.metadata
	regex.match(`(?i)(secret|token|password|passwd|credential|api[_-]?key)`, key)
}

# The arguments of MCP tool calls are free-form and often carry content;
# the tool's name is what an audit needs.
mask contains "/request/mcp_tool/arguments" if input.request.kind == "mcp_tool"

# RFC 6901: "~" is written "~0" and "/" is written "~1".
pointer_escape(s) := replace(replace(s, "~", "~0"), "/", "~1")
