# Who may approve or reject a task that waits for approval.
#
# The gateway evaluates data.mcp.approve when someone calls ApproveTask or
# RejectTask (REST: POST /v1/tasks/{id}/approve|reject). Input:
#
#   action      "approve" or "reject"
#   approver    {id, tenant, roles, auth}: who decides (from credentials or
#               an approval token)
#   task        {id, tenant, principal, command, args, profile, metadata,
#               created_at}: what would run, exactly as stored
#   obligation  {roles, reason, requirements}: the require_approval
#               obligation that made the task wait; `requirements` lists
#               each file's demand ({roles, reason}, see main.rego)
#
# Deny by default. An approver must be in the task's tenant, must not be
# the requester (the gateway refuses that too, before asking), and must hold
# one role of every requirement: when two teams' policies each asked for an
# approval, one approver from only one of those teams does not do. An
# obligation without requirements (stored before they existed) needs one of
# its roles.
package mcp

default approve := false

approve if {
	input.action in {"approve", "reject"}
	input.approver.tenant == input.task.tenant
	input.approver.id != input.task.principal
	approver_meets_requirements
}

approval_requirements := object.get(input.obligation, "requirements", [])

approver_meets_requirements if {
	count(approval_requirements) > 0
	every requirement in approval_requirements {
		approver_holds_one_of(requirement.roles)
	}
}

approver_meets_requirements if {
	count(approval_requirements) == 0
	approver_holds_one_of(input.obligation.roles)
}

approver_holds_one_of(roles) if {
	some role in input.approver.roles
	role in roles
}
