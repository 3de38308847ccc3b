"""results layer (see harness/__init__.py)."""
