# Which network connections (request kind "network") may be opened.
#
# A destination must be on its tenant's allowlist in data.json
# (tenants.<tenant>.network.allow[] = {"host": glob, "ports": [int],
# "protocol": "tcp"|"udp"}), and none of the addresses the host resolved to
# may be private, loopback or link-local unless the entry says
# "private": true. Checking the resolved addresses, not only the name,
# stops DNS-rebinding tricks that point an allowed name at an internal host.
# A bare address is only reached when an entry names exactly that address.
# The gateway's egress proxy classifies the addresses again (IPv4-mapped
# IPv6 included) and refuses internal ones unless this policy allowed the
# connection after seeing them.
package mcp

network_protocols := {"tcp", "udp"}

# Ranges that reach the gateway's own host or network rather than the
# internet.
internal_ranges := [
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
	"::/128", "::1/128", "::ffff:0:0/96", "fc00::/7", "fe80::/10", "ff00::/8",
]

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

deny contains sprintf("destination %q resolves to internal address %q", [net.host, ip]) if {
	some ip in net.resolved_ips
	internal_address(ip)
	not private_allowed
}

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

internal_address(ip) if {
	some cidr in internal_ranges
	net.cidr_contains(cidr, ip)
}
