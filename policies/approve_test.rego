# Tests for approve.rego: who may approve or reject a pending task.
package mcp_test

# Rules are referenced as data.mcp.* (see main_test.rego for why).

approval_input := {
	"action": "approve",
	"approver": {"id": "bob", "tenant": "acme", "roles": ["ops"], "auth": "api_key"},
	"task": {"id": "t1", "tenant": "acme", "principal": "alice", "command": "/usr/bin/rm", "args": [], "profile": "default", "metadata": {}},
	"obligation": {"roles": ["ops", "sre"], "reason": "write scope needs approval"},
}

test_approver_with_a_role_may_approve if {
	data.mcp.approve with input as approval_input
}

test_approver_with_a_role_may_reject if {
	data.mcp.approve with input as object.union(approval_input, {"action": "reject"})
}

test_requester_may_not_approve_own_task if {
	not data.mcp.approve with input as object.union(approval_input, {"approver": {"id": "alice", "tenant": "acme", "roles": ["ops"]}})
}

test_approver_without_role_is_refused if {
	not data.mcp.approve with input as object.union(approval_input, {"approver": {"id": "bob", "tenant": "acme", "roles": ["dev"]}})
}

test_approver_of_another_tenant_is_refused if {
	not data.mcp.approve with input as object.union(approval_input, {"approver": {"id": "bob", "tenant": "other", "roles": ["ops"]}})
}

test_unknown_action_is_refused if {
	not data.mcp.approve with input as object.union(approval_input, {"action": "delete"})
}

test_no_input_is_refused if {
	not data.mcp.approve with input as {}
}

two_requirements := object.union(approval_input, {"obligation": {
	"roles": ["ops", "security"],
	"reason": "a; b",
	"requirements": [
		{"roles": ["ops"], "reason": "a"},
		{"roles": ["security"], "reason": "b"},
	],
}})

test_approver_must_meet_every_requirement if {
	not data.mcp.approve with input as object.union(two_requirements, {"approver": {"id": "bob", "tenant": "acme", "roles": ["ops"]}})
	not data.mcp.approve with input as object.union(two_requirements, {"approver": {"id": "bob", "tenant": "acme", "roles": ["security"]}})
	data.mcp.approve with input as object.union(two_requirements, {"approver": {"id": "bob", "tenant": "acme", "roles": ["ops", "security"]}})
}
