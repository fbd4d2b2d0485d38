# Which commands may run, with which arguments, environment and sandbox.
#
# A command is allowed only when the gateway resolved it to a binary directly
# in /usr/bin or /bin whose name is on the list below. What the sandbox could
# grant beyond the default profile is refused here (host network, extra host
# paths), except restricted network for a principal granted network tools:
# its connections are each decided by network.rego.
package mcp

# Everyday commands that read and print. python3 is on the list although it
# can do anything a program can: for it the sandbox is the only boundary.
allowed_commands := {
	"basename", "cat", "cut", "date", "dirname", "echo", "env", "false",
	"find", "grep", "head", "id", "ls", "printf", "pwd", "python3", "seq",
	"sleep", "sort", "stat", "tail", "tr", "true", "uname", "uniq", "wc",
}

system_bin_dirs := ["/usr/bin/", "/bin/"]

# find predicates that run programs, delete files or write files.
find_denied_args := {
	"-exec", "-execdir", "-ok", "-okdir", "-delete",
	"-fprint", "-fprint0", "-fprintf", "-fls",
}

# Variables that make a shell, the dynamic loader or an interpreter run code
# of the caller's choosing. Names starting with LD_ are refused as well.
denied_env_names := {
	"BASH_ENV", "ENV", "IFS", "GCONV_PATH", "NODE_OPTIONS", "PERL5OPT",
	"PYTHONHOME", "PYTHONINSPECT", "PYTHONPATH", "PYTHONSTARTUP",
}

cmd := c if {
	input.request.kind == "command"
	c := input.request.command
	is_object(c)
}

# The name of the binary that would actually run, when it lies directly in a
# system binary directory.
binary := name if {
	path := cmd.resolved_path
	is_string(path)
	some dir in system_bin_dirs
	startswith(path, dir)
	name := trim_prefix(path, dir)
	not contains(name, "/")
}

deny contains "command request has no command" if {
	input.request.kind == "command"
	not cmd
}

deny contains sprintf("command %q could not be resolved to a system binary", [cmd.name]) if {
	not is_string(cmd.resolved_path)
}

deny contains sprintf("command %q resolves to %q, outside /usr/bin and /bin", [cmd.name, cmd.resolved_path]) if {
	is_string(cmd.resolved_path)
	not binary
}

deny contains sprintf("command %q is not in the allowed command list", [name]) if {
	name := binary
	not name in allowed_commands
}

deny contains sprintf("argument %q is not allowed for find", [arg]) if {
	binary == "find"
	some arg in cmd.args
	arg in find_denied_args
}

deny contains sprintf("argument %q is not allowed for sort", [arg]) if {
	binary == "sort"
	some arg in cmd.args
	sort_runs_or_writes(arg)
}

# -o FILE, clustered short options such as -ro, and --output / --output=FILE
# or any abbreviation of it (--o, --out=...) write a file;
# --compress-program (or --co...) runs a program.
sort_runs_or_writes(arg) if {
	regex.match(`^-[^-]*o`, arg)
}

sort_runs_or_writes(arg) if startswith(arg, "--o")

sort_runs_or_writes(arg) if startswith(arg, "--co")

# env with arguments would run whatever program they name.
deny contains `command "env" may only run without arguments` if {
	binary == "env"
	count(cmd.args) > 0
}

deny contains sprintf("env %q is not allowed", [name]) if {
	some name in cmd.env_names
	denied_env_name(name)
}

denied_env_name(name) if name in denied_env_names

denied_env_name(name) if startswith(name, "LD_")

sandbox := input.request.sandbox if input.request.kind == "command"

deny contains sprintf("network access %q is not granted", [sandbox.network]) if {
	not sandbox.network in {"none", "restricted"}
}

# Restricted network (an empty network namespace whose only way out is the
# gateway's egress proxy) is granted by data alone: the principal needs a
# live grant of scope write or more for network tools ("network:*", or
# "network:<host>:<port>"), applying in this environment. Each connection is
# then decided by network.rego against the tenant's network allowlist.
deny contains `network access "restricted" is not granted` if {
	sandbox.network == "restricted"
	not restricted_network_granted
}

restricted_network_granted if {
	some grant in gate_principal.grants
	some pattern in grant.tools
	network_tool_pattern(pattern)
	grant_live(grant)
	scope_rank[grant.scope] >= scope_rank.write
	environment_matches(object.get(grant, "environment", {}))
}

network_tool_pattern(pattern) if startswith(pattern, "network:")

# "*", "net*" and the like match network tools as well.
network_tool_pattern(pattern) if tool_matches(pattern, "network:")

# Such a command runs in the profile that allows restricted network
# (sandbox-profiles/network-restricted.toml); main.rego adds
# network_obligations to an allowed decision's obligations.
network_obligations contains {"profile": "network-restricted"} if {
	sandbox.network == "restricted"
}

# denied_paths only tighten the sandbox, so they need no grant.
deny contains sprintf("extra host paths are not granted (%s)", [field]) if {
	some field in ["rw_paths", "ro_paths"]
	count(sandbox[field]) > 0
}
