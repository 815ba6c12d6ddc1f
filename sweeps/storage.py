"""Where a sweep's results live: an SQLAlchemy URL, SQLite file by default."""
from __future__ import annotations

from pathlib import Path

DEFAULT_DIR = "runs"


def default_url(name: str, directory: str | Path = DEFAULT_DIR) -> str:
    # sqlite:///relative is resolved against the working directory at every
    # open; an absolute path (four slashes) keeps worker processes and Ray
    # trials, which run elsewhere, on the same file.
    path = Path(directory).expanduser().resolve() / f"{name}.db"
    return f"sqlite:///{path}"


def resolve(name: str, storage: str | None = None, directory: str | Path = DEFAULT_DIR,
            create: bool = False) -> str:
    """The storage URL for sweep `name`; creates the run folder when asked."""
    if storage:
        return storage
    if create:
        Path(directory).expanduser().mkdir(parents=True, exist_ok=True)
    return default_url(name, directory)


def sqlite_file(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None
