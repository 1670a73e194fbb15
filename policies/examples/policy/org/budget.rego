# Compile-time module: agents that touch payment data get a tighter
# monthly spend ceiling.
package tappass.compile.org.budget

import rego.v1

settings := {"budget": {"dollars_per_month": 500}} if "payment_data" in input.categories
