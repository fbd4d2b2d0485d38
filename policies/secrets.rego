# Secrets by reference. A command's environment may name secrets
# (`DB_PASSWORD=secret://db/password`); the gateway reads them from its
# secrets directory only when this policy grants every one to the
# principal, and the values never reach the policy, the store or the logs.
#
# Grants live in data.json, per tenant:
#
#   "tenants": {"acme": {"secrets": {
#       "db/password": {"principals": ["alice"], "roles": ["deployer"]}
#   }}}
#
# A secret without a grant in the principal's tenant is denied.
package mcp

requested_secrets := object.get(input.request, ["command", "secrets"], [])

deny contains sprintf("secret %q is not granted to principal %q", [name, input.principal.id]) if {
	input.request.kind == "command"
	some name in requested_secrets
	not secret_granted(name)
}

secret_granted(name) if {
	grant := data.tenants[input.principal.tenant].secrets[name]
	input.principal.id in object.get(grant, "principals", [])
}

secret_granted(name) if {
	grant := data.tenants[input.principal.tenant].secrets[name]
	some role in input.principal.roles
	role in object.get(grant, "roles", [])
}
