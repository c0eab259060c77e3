"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *,
                     keep_previous: str | os.PathLike | None = None) -> Path:
    """Calls ``write(binary_file)`` on a temporary file beside ``path``, then renames it into place.

    The rename is atomic on POSIX file systems, so even a process killed with
    SIGKILL leaves either the previous file or the new one. With
    ``keep_previous``, the file ``path`` held is renamed to it once the new one
    is complete, just before the new one takes its place.

    Raises:
      FileNotFoundError: the directory of ``path`` does not exist.
      OSError: the file could not be written (a full disk, say), its message
        naming the file; the previous file, if any, is unchanged.
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"{path}: directory {directory} does not exist")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise _failed(path, error) from error
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if keep_previous is not None and path.is_file():
            os.replace(path, keep_previous)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise _failed(path, error) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _failed(path: Path, error: OSError) -> OSError:
    kept = "the previous file is kept" if path.exists() else "nothing was written"
    reason = error.strerror or str(error) or type(error).__name__
    return type(error)(error.errno, f"{path}: cannot be written ({reason}); {kept}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")
