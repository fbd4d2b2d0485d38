# Tests for command.rego. Run with `cargo test -p mcp-policy` (or `opa test policies/`).
package mcp_test

# Rules are referenced as data.mcp.* rather than through `import data.mcp`:
# regorus 0.14 evaluates an imported reference to a rule that depends on a
# `default` rule as undefined when the package spans several files.

# An allowed `ls` request; each test overrides only what it is about.
command_request(overrides) := object.union(
	{
		"principal": {"id": "anonymous", "tenant": "default", "roles": [], "auth": "none"},
		"request": {
			"kind": "command",
			"command": {
				"name": "ls",
				"resolved_path": "/usr/bin/ls",
				"args": ["-la"],
				"env_names": [],
				"cwd": "",
				"timeout_secs": 30,
			},
			"sandbox": {
				"network": "none",
				"limits": {"cpu_limit": 0, "memory_bytes": 0, "pids": 0, "io_weight": 0},
				"rw_paths": [],
				"ro_paths": [],
				"denied_paths": [],
			},
			"metadata": {},
		},
		"context": {"time": "2025-01-01T00:00:00Z", "source": "127.0.0.1:5000", "request_id": "req-1"},
	},
	overrides,
)

command(fields) := command_request({"request": {"command": fields}})

denied_with(inp, reason) if {
	d := data.mcp.decision with input as inp
	d.allow == false
	reason in d.deny_reasons
}

test_listed_command_in_usr_bin_is_allowed if {
	d := data.mcp.decision with input as command_request({})
	d.allow == true
	d.deny_reasons == []
	d.obligations == {"profile": "default"}
}

test_listed_command_in_bin_is_allowed if {
	d := data.mcp.decision with input as command({"name": "cat", "resolved_path": "/bin/cat", "args": ["notes.txt"]})
	d.allow == true
}

test_unlisted_command_is_denied if {
	denied_with(
		command({"name": "rm", "resolved_path": "/usr/bin/rm", "args": ["-rf", "/"]}),
		`command "rm" is not in the allowed command list`,
	)
}

test_unresolved_command_is_denied if {
	denied_with(
		command({"name": "frobnicate", "resolved_path": null}),
		`command "frobnicate" could not be resolved to a system binary`,
	)
}

test_binary_outside_system_dirs_is_denied if {
	denied_with(
		command({"name": "ls", "resolved_path": "/usr/local/bin/ls"}),
		`command "ls" resolves to "/usr/local/bin/ls", outside /usr/bin and /bin`,
	)
	denied_with(
		command({"name": "ls", "resolved_path": "/usr/bin/sub/ls"}),
		`command "ls" resolves to "/usr/bin/sub/ls", outside /usr/bin and /bin`,
	)
}

test_find_actions_that_run_or_write_are_denied if {
	every arg in ["-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf", "-fls"] {
		denied_with(
			command({"name": "find", "resolved_path": "/usr/bin/find", "args": [".", arg, "x"]}),
			sprintf("argument %q is not allowed for find", [arg]),
		)
	}
}

test_plain_find_is_allowed if {
	d := data.mcp.decision with input as command({"name": "find", "resolved_path": "/usr/bin/find", "args": [".", "-name", "*.rs", "-print"]})
	d.allow == true
}

test_sort_output_file_is_denied if {
	every arg in ["-o", "-ro", "--output", "--output=out.txt", "--out=x", "--compress-program=sh"] {
		denied_with(
			command({"name": "sort", "resolved_path": "/usr/bin/sort", "args": [arg, "in.txt"]}),
			sprintf("argument %q is not allowed for sort", [arg]),
		)
	}
}

test_plain_sort_is_allowed if {
	d := data.mcp.decision with input as command({"name": "sort", "resolved_path": "/usr/bin/sort", "args": ["-r", "-n", "-k2", "in.txt"]})
	d.allow == true
}

test_env_with_arguments_is_denied if {
	denied_with(
		command({"name": "env", "resolved_path": "/usr/bin/env", "args": ["rm", "-rf", "/files"]}),
		`command "env" may only run without arguments`,
	)
}

test_loader_and_interpreter_env_names_are_denied if {
	every name in ["LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_ENV", "PYTHONPATH", "NODE_OPTIONS", "IFS"] {
		denied_with(
			command({"env_names": ["HOME", name]}),
			sprintf("env %q is not allowed", [name]),
		)
	}
}

test_ordinary_env_names_are_allowed if {
	d := data.mcp.decision with input as command({"env_names": ["HOME", "LANG", "OLD_LD_HINT", "TZ"]})
	d.allow == true
}

test_network_access_is_denied if {
	denied_with(
		command_request({"request": {"sandbox": {"network": "host"}}}),
		`network access "host" is not granted`,
	)
	denied_with(
		command_request({"request": {"sandbox": {"network": "restricted"}}}),
		`network access "restricted" is not granted`,
	)
	denied_with(
		command_request({"request": {"sandbox": {"network": "bridge"}}}),
		`network access "bridge" is not granted`,
	)
}

# The shipped default tenant with grants replaced by `grants`.
tenants_granting(grants) := {"default": object.union(
	data.tenants["default"],
	{"principals": {"anonymous": {"active": true, "grants": grants}}},
)}

restricted := command_request({"request": {"sandbox": {"network": "restricted"}}})

command_grant := {"tools": ["command:*"], "scope": "write", "expires": null}

test_restricted_network_is_granted_by_data_alone if {
	every tools in [["network:*"], ["network:api.example.com:443"], ["*"]] {
		grants := [command_grant, {"tools": tools, "scope": "write", "expires": null}]
		d := data.mcp.decision with input as restricted with data.tenants as tenants_granting(grants)
		d.allow == true
		d.obligations == {"profile": "network-restricted"}
	}
}

test_restricted_network_needs_a_live_writing_network_grant if {
	every grant in [
		{"tools": ["network:*"], "scope": "read", "expires": null},
		{"tools": ["network:*"], "scope": "write", "expires": "2024-01-01T00:00:00Z"},
		{"tools": ["network:*"], "scope": "write", "expires": null, "environment": {"env": ["prod"]}},
		{"tools": ["file:*"], "scope": "write", "expires": null},
	] {
		denied_with(restricted, `network access "restricted" is not granted`) with data.tenants as tenants_granting([command_grant, grant])
	}
}

test_a_network_grant_does_not_open_host_network if {
	grants := [command_grant, {"tools": ["network:*"], "scope": "write", "expires": null}]
	inp := command_request({"request": {"sandbox": {"network": "host"}}})
	d := data.mcp.decision with input as inp with data.tenants as tenants_granting(grants)
	d.allow == false
	`network access "host" is not granted` in d.deny_reasons
}

test_extra_host_paths_are_denied if {
	denied_with(
		command_request({"request": {"sandbox": {"rw_paths": ["/home"]}}}),
		"extra host paths are not granted (rw_paths)",
	)
	denied_with(
		command_request({"request": {"sandbox": {"ro_paths": ["/etc"]}}}),
		"extra host paths are not granted (ro_paths)",
	)
}

test_denied_paths_only_tighten_and_are_allowed if {
	d := data.mcp.decision with input as command_request({"request": {"sandbox": {"denied_paths": ["/files/secret"]}}})
	d.allow == true
}

test_every_reason_is_reported if {
	d := data.mcp.decision with input as command_request({"request": {
		"command": {"name": "rm", "resolved_path": "/usr/bin/rm", "env_names": ["LD_PRELOAD"]},
		"sandbox": {"network": "host"},
	}})
	d.allow == false
	count(d.deny_reasons) == 3
	d.obligations == {}
}
