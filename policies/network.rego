# Which network connections (request kind "network") may be opened.
#
# Every connection of a restricted-network command comes here through the
# gateway's egress proxy. A destination must be on its tenant's allowlist
# in data.json:
#
#   tenants.<tenant>.network.allow[] = {"host": glob, "ports": [int],
#     "protocol": "tcp"|"udp" (default "tcp"), "private": bool (default false)}
#
# (and the principal needs a grant for network:<host>:<port>, gates.rego).
#
# Internal addresses are judged by the gateway, not here: the input lists
# every address the host resolved to as the proxy's classifier saw it
# (input.request.network.addresses[] = {"ip", "class", "internal", "form"},
# e.g. {"ip": "64:ff9b::7f00:1", "class": "loopback", "internal": true,
# "form": "nat64 of 127.0.0.1"}). Checking the resolved addresses, not only
# the name, stops DNS-rebinding tricks that point an allowed name at an
# internal host. An internal address is refused unless the matching entry
# says "private": true; an address the gateway did not classify is refused.
#
# The allow alone never opens an internal address: the proxy's guard
# refuses every internal address the decision does not grant by name. The
# grant is the decision's `network` obligation (network_obligations below),
# which lists the resolved addresses of a "private" entry.
#
# A bare address is only reached when an entry names exactly that address.
package mcp

network_protocols := {"tcp", "udp"}

net := n if {
	input.request.kind == "network"
	n := input.request.network
	is_object(n)
}

deny contains "network request has no network destination" if {
	input.request.kind == "network"
	not net
}

deny contains sprintf("network protocol %q is not handled", [net.protocol]) if {
	not net.protocol in network_protocols
}

# The allowlist entries that match the destination.
network_entries contains entry if {
	some entry in data.tenants[input.principal.tenant].network.allow
	glob.match(entry.host, ["."], net.host)
	net.port in entry.ports
	object.get(entry, "protocol", "tcp") == net.protocol
}

deny contains sprintf("destination %s:%d/%s is not on the network allowlist of tenant %q", [net.host, net.port, net.protocol, input.principal.tenant]) if {
	count(network_entries) == 0
}

net_addresses := object.get(net, "addresses", [])

# Fail closed on an input the gateway did not classify (written by hand,
# or logged before addresses were part of the input).
deny contains sprintf("destination %q resolves to address %q that the gateway did not classify", [net.host, ip]) if {
	some ip in object.get(net, "resolved_ips", [])
	not ip in {a.ip | some a in net_addresses}
}

deny contains sprintf("destination %q resolves to internal address %q (%s)", [net.host, a.ip, address_label(a)]) if {
	some a in net_addresses
	object.get(a, "internal", true) != false
	not private_allowed
}

address_label(a) := sprintf("%s, %s", [a.class, a.form]) if is_string(a.form)

else := a.class

deny contains sprintf("destination %q is a bare address; only a named entry for exactly it allows that", [net.host]) if {
	address_literal(net.host)
	not exact_entry
}

address_literal(host) if regex.match(`^[0-9.]+$`, host)

address_literal(host) if contains(host, ":")

exact_entry if {
	some entry in network_entries
	entry.host == net.host
}

private_allowed if {
	some entry in network_entries
	object.get(entry, "private", false) == true
}

# The private grant: a connection to a "private" entry may reach exactly
# the addresses its host resolved to, on this port and protocol. main.rego
# adds network_obligations to an allowed decision's obligations.
network_obligations contains {"network": [{"host": a.ip, "port": net.port, "protocol": net.protocol} |
	some a in net_addresses
]} if {
	private_allowed
	count(net_addresses) > 0
}
