"""bench/studies: see bench/__init__.py."""
