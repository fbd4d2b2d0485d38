# Tests for secrets.rego.
package mcp_test

secret_tenants := {"default": {
	"enabled": true,
	"projects": {"default": {"enabled": true}},
	"principals": {
		"anonymous": {"active": true, "grants": [{"tools": ["command:*"], "scope": "write", "expires": null}]},
		"bob": {"active": true, "grants": [{"tools": ["command:*"], "scope": "write", "expires": null}]},
	},
	"approval": {"scopes": [], "roles": []},
	"secrets": {
		"db/password": {"principals": ["anonymous"]},
		"ci/token": {"roles": ["ci"]},
	},
}}

secret_request(principal, roles, names) := command_request({
	"principal": {"id": principal, "tenant": "default", "roles": roles, "auth": "none"},
	"request": {"command": {"env_names": ["X"], "secrets": names}},
})

secret_decide(inp) := d if {
	d := data.mcp.decision with input as inp with data.tenants as secret_tenants
}

test_a_secret_granted_to_the_principal_is_allowed if {
	d := secret_decide(secret_request("anonymous", [], ["db/password"]))
	d.allow == true
}

test_a_secret_granted_to_a_role_is_allowed if {
	d := secret_decide(secret_request("bob", ["ci"], ["ci/token"]))
	d.allow == true
}

test_a_secret_not_granted_to_the_principal_is_denied if {
	d := secret_decide(secret_request("bob", [], ["db/password"]))
	d.allow == false
	"secret \"db/password\" is not granted to principal \"bob\"" in d.deny_reasons
}

test_an_unknown_secret_is_denied if {
	d := secret_decide(secret_request("anonymous", [], ["db/password", "nope"]))
	d.allow == false
	d.deny_reasons == ["secret \"nope\" is not granted to principal \"anonymous\""]
}

test_no_secrets_no_denial if {
	d := secret_decide(command_request({}))
	d.allow == true
}
