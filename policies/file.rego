# Which file operations (ReadFile, WriteFile, DeleteFile) are allowed.
#
# The gateway has already confined the path to the tenant's files root; these
# rules keep credential-looking files out of reach and refuse anything that
# would not be a clean relative path.
package mcp

file_ops := {"read", "write", "delete"}

# Directories whose contents are credentials, wherever they appear.
credential_dirs := {".aws", ".gnupg", ".ssh"}

credential_suffixes := [".key", ".pem"]

file := f if {
	input.request.kind == "file"
	f := input.request.file
	is_object(f)
}

deny contains "file request has no file" if {
	input.request.kind == "file"
	not file
}

deny contains sprintf("file operation %q is not handled", [file.op]) if {
	not file.op in file_ops
}

deny contains sprintf("path %q leaves the files root", [file.path]) if {
	not clean_relative(file.path)
}

deny contains sprintf("path %q looks like a credential file", [file.path]) if {
	looks_like_credential(file.path)
}

warn contains sprintf("recursive delete of %q", [file.path]) if {
	file.op == "delete"
	file.recursive == true
}

clean_relative(path) if {
	is_string(path)
	path != ""
	not startswith(path, "/")
	every part in split(path, "/") {
		not part in {"", ".", ".."}
	}
}

looks_like_credential(path) if {
	some part in split(path, "/")
	part in credential_dirs
}

looks_like_credential(path) if {
	parts := split(path, "/")
	parts[count(parts) - 1] == ".env"
}

looks_like_credential(path) if {
	some suffix in credential_suffixes
	endswith(lower(path), suffix)
}
