"""Whole experiments: the demo, evaluation, the empty-turn prior, the frontier sweep.

Kept free of heavy imports: the command line reads the demo's default agents from here.
"""

# β at two budgets and ν_α with help at the larger one, where the paper's failure and its
# fix would show side by side (whether the agents against β go silent varies from run to
# run: the README). KIND:BUDGET[:STEPS], `klbudget.pipelines.demo.parse_agents`. The agent
# against ν_α trains fewer steps (each costs about 1.5 times as much): silence, whose every
# empty turn costs +∞ under ν_α, is closed to it, and its return passes β's early; its
# return is not comparable with the others' at equal steps.
DEMO_AGENTS = "single:10,single:20,pessimistic:20:80000"
