"""Searches over compression choices: per-layer sensitivity (and, later, budgets and target-driven search)."""
