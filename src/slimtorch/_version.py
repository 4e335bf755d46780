"""The package version (one place: the root package, the CLI and the saved manifest read it)."""

__version__ = "0.1.0"
