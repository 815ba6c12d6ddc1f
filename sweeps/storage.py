"""Where a sweep's results live: an SQLAlchemy URL, SQLite file by default."""
from __future__ import annotations

from pathlib import Path

from trainable.errors import UnknownName, UserError

DEFAULT_DIR = "runs"


class ResultsError(UserError):
    """What stored results cannot give: no such sweep, an unreadable storage, a figure or report they
    cannot make. The analysis layer, which reads results through this module and sweeps.record only,
    raises these; the CLI prints them as one line."""


class UnknownResult(ResultsError, UnknownName):
    """A column or figure kind the results do not have; the message lists the known ones."""


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
        folder = Path(directory).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file of that name, a file above it, no permission
            from .base import SweepError
            raise SweepError(f"--dir {folder}: cannot make the folder ({e.strerror or e}); "
                             "fix: pass --dir a folder, or a path where one can be made") from None
    return default_url(name, directory)


def sqlite_file(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def masked(text: str, url: str) -> str:
    """`text` (a driver's message about `url`) with the URL's password, if any, shown as ***."""
    try:
        from sqlalchemy.engine import make_url
        secret = make_url(url).password
    except Exception:  # not a URL SQLAlchemy can parse
        return text
    return text.replace(str(secret), "***") if secret else text


def shown(url: str) -> str:
    """The URL as printed anywhere (progress lines, errors): its password masked as ***."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: it holds no password SQLAlchemy would use
        return url.split("@", 1)[-1] if "@" in url else url
