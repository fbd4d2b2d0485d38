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

net_input(host, port, protocol, ips) := {
	"principal": {"id": "alice", "tenant": "acme", "roles": [], "auth": "jwt"},
	"request": {"kind": "network", "network": {"host": host, "port": port, "protocol": protocol, "resolved_ips": ips}, "metadata": {}},
	"context": {"time": "2025-06-01T12:00:00Z", "source": null, "request_id": "req-n"},
}

net_decide(inp) := d if {
	d := data.mcp.decision with input as inp with data.tenants as net_tenants
}

test_allowlisted_public_destination_is_allowed if {
	d := net_decide(net_input("api.github.com", 443, "tcp", ["140.82.112.6"]))
	d.allow == true
	d.obligations == {"profile": "default"}
}

test_destination_off_the_allowlist_is_denied if {
	d := net_decide(net_input("example.com", 443, "tcp", ["93.184.216.34"]))
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

test_allowed_name_resolving_inside_is_denied if {
	every ip in ["10.1.2.3", "127.0.0.1", "169.254.169.254", "192.168.1.1", "::1", "fd00::1"] {
		d := net_decide(net_input("api.github.com", 443, "tcp", ["140.82.112.6", ip]))
		d.allow == false
		sprintf("destination %q resolves to internal address %q", ["api.github.com", ip]) in d.deny_reasons
	}
}

test_private_entries_may_resolve_inside if {
	d := net_decide(net_input("registry.internal", 5000, "tcp", ["10.0.0.5"]))
	d.allow == true
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
	d := net_decide(net_input("140.82.112.6", 8080, "tcp", ["140.82.112.6"]))
	d.allow == false
	`destination "140.82.112.6" is a bare address; only a named entry for exactly it allows that` in d.deny_reasons
	e := net_decide(net_input("2606:4700::1111", 8080, "tcp", ["2606:4700::1111"]))
	e.allow == false
	f := net_decide(net_input("203.0.113.7", 8443, "tcp", ["203.0.113.7"]))
	f.allow == true
}

test_single_label_glob_and_more_internal_ranges if {
	net_decide(net_input("intranet", 8080, "tcp", ["93.184.216.34"])).allow == true
	every ip in ["224.0.0.1", "::ffff:127.0.0.1", "ff02::1", "::"] {
		d := net_decide(net_input("intranet", 8080, "tcp", [ip]))
		d.allow == false
	}
}
