# Built-in runtime module: per-tool slot constraints from the compiled
# policy (`data.policy.tools.constraints`). Input: {"tool": ID, "args": {...}}.
package tappass.runtime.builtin.tool_constraints

import rego.v1

constraint := data.policy.tools.constraints[input.tool]

amount := input.args[constraint.amount_param]

destination := input.args[constraint.destination_param]

deny_reasons contains msg if {
	constraint.max_amount != null
	amount > constraint.max_amount
	msg := sprintf("%s: amount %v exceeds the ceiling %v", [input.tool, amount, constraint.max_amount])
}

deny_reasons contains msg if {
	constraint.allowed_destinations != null
	not destination_allowed
	msg := sprintf("%s: destination %v is not in the allow-list", [input.tool, destination])
}

deny_reasons contains msg if {
	some d in constraint.denied_destinations
	destination == d
	msg := sprintf("%s: destination %v is denied", [input.tool, destination])
}

destination_allowed if {
	some d in constraint.allowed_destinations
	destination == d
}

destination_allowed if {
	some d in constraint.allowed_destinations
	startswith(d, "*.")
	endswith(destination, substring(d, 1, -1))
}

decision := {"action": "deny", "reasons": sort(deny_reasons)} if count(deny_reasons) > 0

decision := {"action": "allow", "reasons": []} if count(deny_reasons) == 0
