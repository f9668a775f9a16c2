"""Test-only helpers that are packages of their own (tests/ is on sys.path)."""
