"""The library's version (one place: pyproject reads it, checkpoints record it)."""

__version__ = "0.1.0"
