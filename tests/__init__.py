"""The test suite (pytest, pytest-mpi); tests/support holds what the tests and the benches share."""
