import os
import subprocess
import sys

from evojax_prune.io import compile_cache


def test_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.DIRECTORY_ENV, str(tmp_path / "mine"))
    assert compile_cache.cache_directory() == tmp_path / "mine" / "xla"
    monkeypatch.delenv(compile_cache.DIRECTORY_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_directory() == tmp_path / "xdg" / "evojax-prune" / "xla"


def _enable_in_a_fresh_process(**environment) -> tuple[str, str]:
    """(what enable() returned, JAX's cache directory afterwards): the jax config is process-wide."""
    code = (
        "import jax; from evojax_prune.io import compile_cache; "
        "print(compile_cache.enable()); print(jax.config.jax_compilation_cache_dir)"
    )
    ours = ("JAX_COMPILATION_CACHE_DIR", compile_cache.DIRECTORY_ENV, compile_cache.DISABLE_ENV)
    env = {key: value for key, value in os.environ.items() if key not in ours}
    env.update(environment)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    returned, configured = done.stdout.strip().splitlines()[-2:]
    return returned, configured


def test_enable_sets_jax_cache_unless_turned_off_or_set_by_the_user(tmp_path):
    root = str(tmp_path / "cache")
    expected = str(tmp_path / "cache" / "xla")
    assert _enable_in_a_fresh_process(EVOJAX_PRUNE_CACHE_DIR=root) == (expected, expected)
    assert (tmp_path / "cache" / "xla").is_dir()
    returned, configured = _enable_in_a_fresh_process(
        EVOJAX_PRUNE_CACHE_DIR=root, EVOJAX_PRUNE_COMPILE_CACHE="0"
    )
    assert returned == "None" and configured in ("None", "")
    theirs = str(tmp_path / "theirs")
    assert _enable_in_a_fresh_process(JAX_COMPILATION_CACHE_DIR=theirs) == (theirs, theirs)


def test_a_command_line_run_fills_the_cache(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, compile_cache.DIRECTORY_ENV: str(cache)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    command = [sys.executable, "-m", "evojax_prune.cli", "run", "--population", "4", "--generations", "1",
               "--out", str(tmp_path / "run")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any((cache / "xla").iterdir()), "no compiled program was written"
