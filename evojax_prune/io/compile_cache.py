"""XLA's compiled programs kept on disk between runs (JAX's persistent compilation cache).

A search compiles its training and scoring programs once per population shape,
and ``extract`` / ``explain`` compile ResNet-50: on a CPU that is a third of a
short run (``evojax-prune run --generations 2`` on the embedded data: 40 s
without the cache, 27 s with a warm one, the same front). The command line turns
the cache on; in Python it is the caller's choice
(``jax.config.update("jax_compilation_cache_dir", ...)``).

Where: ``$JAX_COMPILATION_CACHE_DIR`` when set (JAX's own setting, left as it
is), else ``$EVOJAX_PRUNE_CACHE_DIR/xla``, else
``$XDG_CACHE_HOME/evojax-prune/xla`` (``~/.cache/evojax-prune/xla``).
``EVOJAX_PRUNE_COMPILE_CACHE=0`` turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

DISABLE_ENV = "EVOJAX_PRUNE_COMPILE_CACHE"
DIRECTORY_ENV = "EVOJAX_PRUNE_CACHE_DIR"
# Programs that compile faster than this are not worth a file (JAX's default is 1 s;
# the search's scoring programs take about half a second on a CPU).
MIN_COMPILE_SECONDS = 0.5


def cache_directory() -> Path:
    """Where compiled programs go when nothing else says (see the module docstring)."""
    if os.environ.get(DIRECTORY_ENV):
        return Path(os.environ[DIRECTORY_ENV]).expanduser() / "xla"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "evojax-prune" / "xla"


def enable() -> Path | None:
    """Turns the persistent compilation cache on; returns its directory (None: left off)."""
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return None
    configured = jax.config.jax_compilation_cache_dir
    if configured:  # the user's own setting wins
        return Path(configured)
    directory = cache_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory
