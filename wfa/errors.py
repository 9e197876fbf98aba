"""Expected failures: one error type per command, shown as a one-line message with a non-zero exit.

A :class:`WfaError` says what went wrong, names the item or file, and says what to do. The ``wfa``
command line (:func:`wfa.cli.main`) prints it as ``wfa <command>: error: <message>`` and exits with
its ``exit_code``; anything else that escapes a command is a bug and keeps its traceback.
"""
from __future__ import annotations


class WfaError(Exception):
    """An expected failure of a ``wfa`` command (bad input, an unusable file, a refused run)."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # one line: a multi-line message would look like a traceback
        super().__init__(" ".join(str(message).split()))

    def with_exit_code(self, code: int) -> "WfaError":
        """This error with another exit code (2: unusable arguments, as argparse uses)."""
        self.exit_code = code
        return self


class ShardsError(WfaError):
    """``wfa shards`` cannot write the data set (bad input, locked or unusable ``--out``)."""


class TrainError(WfaError):
    """``wfa train`` refuses to start or stops (bad data, occupied run folder, non-finite loss, bad checkpoint)."""


class EvalError(WfaError):
    """``wfa eval`` cannot evaluate (bad checkpoint, aggregator, shards or output path)."""


class DataError(TrainError, EvalError):
    """The shards cannot be read as promised (samples that do not decode, an index that contradicts its shards)."""


class RedundancyError(WfaError):
    """``wfa redundancy`` cannot report (an unusable caption file or output path)."""


class DemoError(WfaError):
    """``wfa demo`` cannot run (unusable arguments or output folder)."""


class CheckpointError(TrainError, EvalError):
    """A checkpoint or aggregator file that cannot be loaded safely (truncated, foreign, old format, pickled code)."""


class BusyError(ShardsError, TrainError):
    """Another wfa run holds the lock of the output folder."""


class NonFiniteError(TrainError):
    """The loss or the gradient of a training step is NaN or inf (the step's update is not applied)."""

    def __init__(self, step: int, what: str, loss: float) -> None:
        super().__init__(f"non-finite {what} at step {step} (loss {loss}): training stopped before that update")
        self.step, self.what, self.loss = step, what, loss
