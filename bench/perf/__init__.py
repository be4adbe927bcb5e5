"""bench/perf: see bench/__init__.py."""
