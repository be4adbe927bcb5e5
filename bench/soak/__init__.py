"""bench/soak: see bench/__init__.py."""
