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
#   obligation  {roles, reason}: the require_approval obligation that made
#               the task wait
#
# Deny by default. An approver must be in the task's tenant, must not be
# the requester (the gateway refuses that too, before asking), and must hold
# one of the obligation's roles.
package mcp

default approve := false

approve if {
	input.action in {"approve", "reject"}
	input.approver.tenant == input.task.tenant
	input.approver.id != input.task.principal
	approver_has_role
}

approver_has_role if {
	some role in input.approver.roles
	role in input.obligation.roles
}
