"""Profile YAML files: ``smoke`` (CI), ``quick`` (CPU, offline; the book), ``paper``."""
