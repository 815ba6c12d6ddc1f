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


class DeviceFailure(TrialError):
    """CUDA failed for this trial (a device-side assert, an invalid device, a library error)."""


# Texts by which CUDA and its libraries report a failure, and which of them mean "no memory left".
OUT_OF_MEMORY_TEXTS = ("out of memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED",
                       "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")
DEVICE_TEXTS = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error", "invalid device ordinal",
                "device-side assert", "CUDA driver", "NCCL error")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def out_of_memory(error: BaseException) -> OutOfMemory | None:
    """The trial error for an allocator failure (host or device), or None for any other error."""
    import torch

    text = str(error)
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)) or \
            (isinstance(error, RuntimeError) and any(t in text for t in OUT_OF_MEMORY_TEXTS)):
        return OutOfMemory(f"out of memory: {_first_line(error)}")
    return None


def device_failure(error: BaseException) -> TrialError | None:
    """The trial error for any CUDA failure (out of memory included), or None for other errors.

    A trial in a process of its own fails with it; in a process that goes on to
    other trials only out of memory is safe to survive (a device-side assert
    leaves the CUDA context unusable).
    """
    import torch

    if (oom := out_of_memory(error)) is not None:
        return oom
    accelerator = getattr(torch, "AcceleratorError", ())
    if isinstance(error, accelerator) or \
            (isinstance(error, RuntimeError) and any(t in str(error) for t in DEVICE_TEXTS)):
        return DeviceFailure(f"CUDA failure: {_first_line(error)}")
    return None


def release_device_memory() -> None:
    """Give the device cache back once nothing references the trial's tensors any more."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
