"""One persistent XLA compilation cache for the whole test session (compile_cache.py), and the
finished runs that several test files share.

Many tests compile the same programs: the in-process tests, and the command-line
runs they start in subprocesses (which inherit ``EVOJAX_PRUNE_CACHE_DIR``). A
directory of the session's own keeps the tests hermetic: nothing lands in the
user's cache.
"""

import os

import pytest

from evojax_prune.io import compile_cache


@pytest.fixture(scope="session", autouse=True)
def session_compile_cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("compile-cache")
    previous = os.environ.get(compile_cache.DIRECTORY_ENV)
    os.environ[compile_cache.DIRECTORY_ENV] = str(directory)
    compile_cache.enable()
    yield directory
    if previous is None:
        os.environ.pop(compile_cache.DIRECTORY_ENV, None)
    else:
        os.environ[compile_cache.DIRECTORY_ENV] = previous


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny run on the embedded digits: (SearchResult, run directory).

    Searched once per session for test_report and test_published; a test that
    writes into it works on ``report_runs.copy_run``.
    """
    from report_runs import tiny_config

    from evojax_prune.data import embedded
    from evojax_prune.search.loop import run_search

    out = tmp_path_factory.mktemp("runs") / "run"
    return run_search(embedded.digits(), tiny_config(), seed=0, out_dir=out), out


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """A finished command-line run (``run_dirs.run_command``): the front every faulty run of
    test_faults and test_reliability must reach. Never written to: tests work on ``copy_of``."""
    from run_dirs import run_command

    from evojax_prune.cli import main as cli

    out = tmp_path_factory.mktemp("base") / "run"
    assert cli.main(run_command(out)) == 0
    return out
