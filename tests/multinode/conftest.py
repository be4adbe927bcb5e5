"""The module-scoped 3-node cluster fixture (helpers.cluster) for both test modules."""

from helpers import cluster  # noqa: F401
