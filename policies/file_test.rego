# Tests for file.rego.
package mcp_test

# Rules are referenced as data.mcp.* rather than through `import data.mcp`:
# regorus 0.14 evaluates an imported reference to a rule that depends on a
# `default` rule as undefined when the package spans several files.

file_request(path, op) := {
	"principal": {"id": "anonymous", "tenant": "default", "roles": [], "auth": "none"},
	"request": {
		"kind": "file",
		"file": {"path": path, "op": op, "mode": 420, "recursive": false},
		"metadata": {},
	},
	"context": {"time": "2025-01-01T00:00:00Z", "source": null, "request_id": "req-2"},
}

test_ordinary_files_can_be_read_written_and_deleted if {
	every op in ["read", "write", "delete"] {
		d := data.mcp.decision with input as file_request("reports/q1.csv", op)
		d.allow == true
		d.obligations.profile == "default"
	}
}

test_credential_looking_paths_are_denied if {
	every path in [".ssh/id_ed25519", "home/.gnupg/pubring.kbx", "a/.aws/credentials", "app/.env", "tls/server.pem", "tls/server.KEY"] {
		d := data.mcp.decision with input as file_request(path, "read")
		d.allow == false
		sprintf("path %q looks like a credential file", [path]) in d.deny_reasons
	}
}

test_similar_but_harmless_names_are_allowed if {
	every path in ["ssh/notes.txt", "app/.env.example.md", "keys.txt", "pem/readme"] {
		d := data.mcp.decision with input as file_request(path, "read")
		d.allow == true
	}
}

test_paths_that_are_not_clean_and_relative_are_denied if {
	every path in ["/etc/passwd", "../x", "a/../../b", "a//b", ""] {
		d := data.mcp.decision with input as file_request(path, "read")
		d.allow == false
		sprintf("path %q leaves the files root", [path]) in d.deny_reasons
	}
}

test_unknown_file_operation_is_denied if {
	d := data.mcp.decision with input as file_request("a.txt", "chmod")
	d.allow == false
	`file operation "chmod" is not handled` in d.deny_reasons
}

test_recursive_delete_is_allowed_with_a_warning if {
	inp := object.union(file_request("build", "delete"), {"request": {"file": {"recursive": true}}})
	d := data.mcp.decision with input as inp
	d.allow == true
	d.warnings == [`recursive delete of "build"`]
}
