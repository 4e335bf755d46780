"""Pruning: unstructured, N:M, structured (channels, heads), layer removal, and their schedules."""
