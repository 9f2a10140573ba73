"""The package version (one place; pyproject reads its own copy)."""

__version__ = "0.1.0"
