# Tests for network.rego.
package mcp_test

net_tenants := {"acme": {
	"enabled": true,
	"projects": {"default": {"enabled": true}},
	"principals": {"alice": {"active": true, "grants": [{"tools": ["network:*"], "scope": "write", "expires": null}]}},
	"approval": {"scopes": [], "roles": []},
	"network": {"allow": [
		{"host": "*.github.com", "ports": [443], "protocol": "tcp"},
		{"host": "registry.internal", "ports": [5000], "private": true},
		{"host": "203.0.113.7", "ports": [8443]},
		{"host": "*", "ports": [8080]},
	]},
}}

# An address as the gateway classifies it (mcp_egress::classify).
public(ip) := {"ip": ip, "class": "public", "internal": false, "form": null}

inside(ip, class) := {"ip": ip, "class": class, "internal": true, "form": null}

embedded(ip, class, form) := {"ip": ip, "class": class, "internal": true, "form": form}

net_input(host, port, protocol, addresses) := {
	"principal": {"id": "alice", "tenant": "acme", "roles": [], "auth": "jwt"},
	"request": {"kind": "network", "network": {
		"host": host, "port": port, "protocol": protocol,
		"resolved_ips": [a.ip | some a in addresses],
		"addresses": addresses,
	}, "metadata": {}},
	"context": {"time": "2025-06-01T12:00:00Z", "source": null, "request_id": "req-n"},
}

net_decide(inp) := d if {
	d := data.mcp.decision with input as inp with data.tenants as net_tenants
}

test_allowlisted_public_destination_is_allowed if {
	d := net_decide(net_input("api.github.com", 443, "tcp", [public("140.82.112.6")]))
	d.allow == true
	# No private grant: the proxy would refuse any internal address.
	d.obligations == {"profile": "default"}
}

test_destination_off_the_allowlist_is_denied if {
	d := net_decide(net_input("example.com", 443, "tcp", [public("93.184.216.34")]))
	d.allow == false
	d.deny_reasons == [`destination example.com:443/tcp is not on the network allowlist of tenant "acme"`]
	# The host glob does not cross dots: a.b.github.com is not *.github.com.
	e := net_decide(net_input("a.b.github.com", 443, "tcp", []))
	e.allow == false
}

test_wrong_port_or_protocol_is_denied if {
	net_decide(net_input("api.github.com", 80, "tcp", [])).allow == false
	net_decide(net_input("api.github.com", 443, "udp", [])).allow == false
	d := net_decide(net_input("api.github.com", 443, "icmp", []))
	`network protocol "icmp" is not handled` in d.deny_reasons
}

# Every internal form the gateway reports, next to a public address.
internal_forms := [
	inside("10.1.2.3", "private"),
	inside("127.0.0.1", "loopback"),
	inside("169.254.169.254", "metadata"),
	inside("100.64.0.1", "cgnat"),
	inside("::1", "loopback"),
	inside("fd00::1", "unique-local"),
	inside("fe80::1", "link-local"),
	inside("0.0.0.0", "unspecified"),
	inside("255.255.255.255", "broadcast"),
	inside("224.0.0.1", "multicast"),
	embedded("64:ff9b::7f00:1", "loopback", "nat64 of 127.0.0.1"),
	embedded("64:ff9b:1::a9fe:a9fe", "metadata", "nat64 local-use of 169.254.169.254"),
	embedded("2002:7f00:1::", "loopback", "6to4 of 127.0.0.1"),
	embedded("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback", "teredo of 127.0.0.1"),
	embedded("::a9fe:a9fe", "metadata", "v4-compatible of 169.254.169.254"),
	embedded("::ffff:0:7f00:1", "loopback", "siit of 127.0.0.1"),
	embedded("::ffff:127.0.0.1", "loopback", "v4-mapped of 127.0.0.1"),
]

test_allowed_name_resolving_inside_is_denied_naming_the_form if {
	every a in internal_forms {
		d := net_decide(net_input("api.github.com", 443, "tcp", [public("140.82.112.6"), a]))
		d.allow == false
		d.deny_reasons == [sprintf("destination %q resolves to internal address %q (%s)", ["api.github.com", a.ip, data.mcp.address_label(a)])]
	}
	d := net_decide(net_input("api.github.com", 443, "tcp", [embedded("64:ff9b::7f00:1", "loopback", "nat64 of 127.0.0.1")]))
	d.deny_reasons == [`destination "api.github.com" resolves to internal address "64:ff9b::7f00:1" (loopback, nat64 of 127.0.0.1)`]
}

test_private_entries_may_resolve_inside_and_grant_exactly_those_addresses if {
	every a in internal_forms {
		d := net_decide(net_input("registry.internal", 5000, "tcp", [a]))
		d.allow == true
		d.obligations == {"profile": "default", "network": [{"host": a.ip, "port": 5000, "protocol": "tcp"}]}
	}
	d := net_decide(net_input("registry.internal", 5000, "tcp", [inside("10.0.0.5", "private"), public("93.184.216.34")]))
	d.obligations.network == [
		{"host": "10.0.0.5", "port": 5000, "protocol": "tcp"},
		{"host": "93.184.216.34", "port": 5000, "protocol": "tcp"},
	]
}

test_addresses_the_gateway_did_not_classify_are_denied if {
	# As `policy eval` would see an input written by hand: resolved_ips only.
	d := net_decide(object.union(net_input("api.github.com", 443, "tcp", []), {"request": {"network": {"resolved_ips": ["64:ff9b::7f00:1"]}}}))
	d.allow == false
	d.deny_reasons == [`destination "api.github.com" resolves to address "64:ff9b::7f00:1" that the gateway did not classify`]
	# A private entry does not help.
	e := net_decide(object.union(net_input("registry.internal", 5000, "tcp", []), {"request": {"network": {"resolved_ips": ["10.0.0.5"]}}}))
	e.allow == false
}

test_network_kind_without_destination_is_denied if {
	d := net_decide({"principal": {"id": "alice", "tenant": "acme"}, "request": {"kind": "network"}, "context": {"time": "2025-06-01T12:00:00Z"}})
	d.allow == false
	"network request has no network destination" in d.deny_reasons
}

test_shipped_data_allows_no_destination if {
	inp := object.union(net_input("api.github.com", 443, "tcp", []), {"principal": {"id": "anonymous", "tenant": "default"}})
	d := data.mcp.decision with input as inp
	d.allow == false
	`destination api.github.com:443/tcp is not on the network allowlist of tenant "default"` in d.deny_reasons
}

test_bare_addresses_need_an_exact_entry if {
	d := net_decide(net_input("140.82.112.6", 8080, "tcp", [public("140.82.112.6")]))
	d.allow == false
	`destination "140.82.112.6" is a bare address; only a named entry for exactly it allows that` in d.deny_reasons
	e := net_decide(net_input("2606:4700::1111", 8080, "tcp", [public("2606:4700::1111")]))
	e.allow == false
	f := net_decide(net_input("203.0.113.7", 8443, "tcp", [public("203.0.113.7")]))
	f.allow == true
}

test_single_label_glob if {
	net_decide(net_input("intranet", 8080, "tcp", [public("93.184.216.34")])).allow == true
	net_decide(net_input("intranet", 8080, "tcp", [inside("10.0.0.1", "private")])).allow == false
}
