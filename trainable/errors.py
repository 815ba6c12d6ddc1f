"""Errors a trial can end with; engines record them as the trial's reason."""


class TrialError(Exception):
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
