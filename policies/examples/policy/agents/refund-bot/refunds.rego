# Runtime entry point: refunds above the approval threshold wait for a human
# (the hard ceiling, max_amount, is enforced by the built-in constraints module).
package tappass.runtime.refunds

import rego.v1

approval_threshold := 200

default decision := {"action": "allow"}

decision := {
	"action": "require_approval",
	"reason": sprintf("refund of %v exceeds the approval threshold of %v", [input.args.amount, approval_threshold]),
} if {
	input.tool == "stripe.create_refund"
	input.args.amount > approval_threshold
}
