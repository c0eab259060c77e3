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


def write_all_atomically(files: dict[Path, Callable[[IO[bytes]], Any]]) -> list[Path]:
    """Writes several files as one change: every temporary file complete on disk before any rename.

    A failure while writing (a full disk, say) removes the temporary files and
    leaves every one of ``files`` as it was, and its message says so; only the
    renames, which need no space, remain once the last byte is written. A kill
    between two renames leaves some files new and some old, each complete, as
    ``write_atomically`` one after another would.

    Args:
      files: path -> ``write(binary_file)``, renamed into place in this order.

    Raises:
      OSError: naming the file that failed and that none of them changed.
    """
    written: list[tuple[Path, str]] = []
    try:
        for path, write in files.items():
            path = Path(path)
            if not path.parent.is_dir():
                raise FileNotFoundError(f"{path}: directory {path.parent} does not exist")
            try:
                handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as error:
                raise _failed(path, error, _unchanged(files)) from error
            written.append((path, temporary))
            try:
                with os.fdopen(handle, "wb") as stream:
                    write(stream)
                    stream.flush()
                    os.fsync(stream.fileno())
            except OSError as error:
                raise _failed(path, error, _unchanged(files)) from error
        for path, temporary in written:
            os.replace(temporary, path)
    except BaseException:
        for _, temporary in written:
            Path(temporary).unlink(missing_ok=True)
        raise
    return [path for path, _ in written]


def _unchanged(files: dict[Path, Any]) -> str:
    names = ", ".join(Path(path).name for path in files)
    return f"none of {names} was changed"


def _failed(path: Path, error: OSError, kept: str | None = None) -> OSError:
    if kept is None:
        kept = "the previous file is kept" if path.exists() else "nothing was written"
    reason = error.strerror or str(error) or type(error).__name__
    return type(error)(error.errno, f"{path}: cannot be written ({reason}); {kept}")


def text_writer(text: str) -> Callable[[IO[bytes]], Any]:
    """A ``write`` callable of UTF-8 ``text``."""
    return lambda stream: stream.write(text.encode("utf-8"))


def json_text(data: Any) -> str:
    """``data`` as the run files' JSON: indented, keys sorted, NaN allowed, a final newline."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n"


def json_writer(data: Any) -> Callable[[IO[bytes]], Any]:
    """A ``write`` callable of ``json_text(data)``."""
    return text_writer(json_text(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomically(path, text_writer(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_atomically(path, json_writer(data))
