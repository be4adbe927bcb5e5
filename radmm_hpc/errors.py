"""Errors that users cause (bad config, data, world size, checkpoints).

A UserError carries one line meant for people; the CLI prints it on rank 0 and every rank exits
with EXIT_USAGE. Anything else is a bug and is reported with a traceback file.
"""

EXIT_USAGE = 2          # bad input: config, data, world size, damaged checkpoint
EXIT_INTERNAL = 1       # a bug or an unexpected failure
EXIT_PREEMPTED = 3      # preempted (signal): a checkpoint was written, requeue the job
EXIT_DIVERGED = 4       # NaN/Inf loss: stopped, the last good checkpoint is kept


class UserError(Exception):
    """A problem with the user's input, reported as one line."""

    exit_code = EXIT_USAGE


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class Preempted(Exception):
    """A signal asked the job to stop; a checkpoint was written and the run can be resumed."""

    exit_code = EXIT_PREEMPTED
