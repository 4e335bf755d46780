"""The dependency graph: trace a model once and group the channels that must be removed together."""
