"""Saving, loading and exporting models without pickle."""
