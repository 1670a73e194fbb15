# Built-in compile-time module: tier floors. Evaluated by the compiler with
# the agent's context as input; `settings` is merged at the builtin level.
package tappass.compile.builtin.tier

import rego.v1

settings := {
	"filesystem": {"read_only": true},
	"interpreter": {"host_functions": []},
	"budget": {"tool_calls_per_minute": 0},
} if input.tier == "observer"

settings := {"budget": {"tool_calls_per_minute": 30}} if input.tier == "worker"
