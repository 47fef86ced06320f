"""Whole experiments: the demo, evaluation, the empty-turn prior, the frontier sweep.

Kept free of heavy imports: the command line reads the demo's default agents from here.
"""

# The failure and the fix side by side: β at two budgets, ν_α with help at the larger one
# (KIND:BUDGET[:STEPS], `klbudget.pipelines.demo.parse_agents`). The agent against ν_α
# trains fewer steps (its steps cost about 1.5 times as much): it has nothing to find in
# silence, whose every empty turn costs +∞ under ν_α, and its return passes β's early.
DEMO_AGENTS = "single:10,single:20,pessimistic:20:80000"
