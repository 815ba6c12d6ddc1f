"""Errors a trial can end with; engines record them as the trial's reason.

`UserError` is the root of every error the user can act on, in every layer
(a spec, a config value, a storage, a missing sweep): the CLI prints it as
one line and exits non-zero. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user can fix (or an expected outcome, such as a diverged trial): one line, no traceback."""


class UnknownName(UserError, KeyError):
    """A name that no registry holds; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrialError(UserError):
    """A trial cannot go on; the sweep records the reason and continues."""


class ConfigError(TrialError, ValueError):
    """A trial-config key holds a value the trainable cannot use."""

    def __init__(self, key: str, message: str, fix: str = ""):
        self.key, self.message, self.fix = key, message, fix
        super().__init__(f"{key}: {message}" + (f"; fix: {fix}" if fix else ""))


class Diverged(TrialError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step = epoch, step
        super().__init__(f"diverged at epoch {epoch}, step {step}")


class DatasetMissing(TrialError):
    """The dataset is not on disk and downloading is not allowed."""


class OutOfMemory(TrialError):
    """The trial's model or batch does not fit in the device's memory."""


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def out_of_memory(error: BaseException) -> OutOfMemory:
    """The trial error for an allocator failure, after freeing what the device cache holds."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return OutOfMemory(f"out of memory: {str(error).splitlines()[0][:200]}")
