"""The program's error classes and exit statuses.

A UserError (bad config, data, world size, checkpoint) carries one line meant for people; the CLI
prints it on rank 0 and every rank exits with its exit_code. A CollectiveError is one that every
rank has seen (runtime.agree), so all leave together. Anything else is a bug and is reported with
a traceback file.
"""

EXIT_USAGE = 2          # bad input: config, data, world size, damaged checkpoint
EXIT_INTERNAL = 1       # a bug or an unexpected failure
EXIT_PREEMPTED = 3      # preempted (signal): a checkpoint was written, requeue the job
EXIT_DIVERGED = 4       # NaN/Inf loss: stopped, the last good checkpoint is kept
EXIT_COMM = 5           # a peer stopped answering within comm.timeout_s (node lost, network cut)


class UserError(Exception):
    """A problem with the user's input, reported as one line."""

    exit_code = EXIT_USAGE


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    """A damaged, foreign or incompatible checkpoint."""


class DamagedCheckpoint(CheckpointError):
    """Missing, truncated or corrupted files: `--resume auto` skips such a checkpoint."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (full disk, unwritable directory)."""


class CollectiveError(Exception):
    """A UserError that every rank has seen (raised by runtime.agree): exit cleanly on all ranks."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Preempted(Exception):
    """A signal asked the job to stop; a checkpoint was written and the run can be resumed."""

    exit_code = EXIT_PREEMPTED
