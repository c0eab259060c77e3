"""Fault injection: damaged run files, kills, a full disk, a read-only directory, diverged heads.

Every case states what the tool must do. The common base is one finished
command-line run (the quick preset, population 4, three generations, seed 0);
a faulty run must reach exactly its front (masks, metrics, weights) or stop
with one line naming the file, what is wrong and what to do, exit 2, leaving
every file as it was.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from fronts import assert_same_front
from run_dirs import FLAGS, copy_of, digests, one_line_error, run_command

from evojax_prune import config
from evojax_prune.cli import main as cli
from evojax_prune.data import embedded
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.result import objectives
from evojax_prune.run import rundir
from evojax_prune.search.loop import run_search, run_searches
from evojax_prune.search.progress import generation_line


def contents(directory: Path) -> dict[str, bytes]:
    return {path.relative_to(directory).as_posix(): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


# --------------------------------------------------------------------------- damaged files


def with_format(data: bytes, name: str) -> bytes:
    """The file as the same writer of another format version (99) would have written it."""
    if name.endswith(".json"):
        return json.dumps({**json.loads(data), "format": 99}).encode()
    if name.endswith(".npz"):
        with np.load(io.BytesIO(data)) as archive:
            arrays = {key: archive[key] for key in archive.files}
        stream = io.BytesIO()
        np.savez(stream, **{**arrays, "format": np.asarray(99), "format_version": np.asarray(99)})
        return stream.getvalue()
    if name == "history.jsonl":  # another layout of its lines
        lines = [json.loads(line) for line in data.decode().splitlines()]
        return "".join(json.dumps({"gen": row["generation"], "hv": row["hypervolume"]}) + "\n"
                       for row in lines).encode()
    assert name == "pareto.csv"
    header, rest = data.decode().split("\n", 1)
    return ("index,features,fraction" + header.split("mem", 1)[1] + "\n" + rest).encode()


DAMAGE = {
    "truncated": lambda data, name: data[: len(data) // 2],
    "emptied": lambda data, name: b"",
    "garbage": lambda data, name: np.random.default_rng(len(data)).bytes(max(len(data), 64)),
    "wrong version": with_format,
}
# What each damage must be called, by kind of file.
PROBLEMS = {
    "json": {"truncated": "not valid JSON", "emptied": "empty", "garbage": "not UTF-8 text",
             "wrong version": "format version 99 is not supported"},
    "npz": {"truncated": "not a readable .npz archive", "emptied": "empty",
            "garbage": "not a readable .npz archive", "wrong version": "format version 99 is not supported"},
    "history.jsonl": {"truncated": "not valid JSON", "emptied": "empty", "garbage": "not UTF-8 text",
                      "wrong version": "lacks generation"},
    "pareto.csv": {"truncated": "rows of a front", "emptied": "empty", "garbage": "not a CSV table",
                   "wrong version": "are not a front's"},
}
# The command that reads each file back, and the remedy its error must give.
READERS = {
    "config.json": ("resume", "--overwrite"),
    "history.jsonl": ("resume", "--overwrite"),
    "checkpoint.npz": ("resume", "--overwrite"),
    "pareto.npz": ("report", "--resume"),
    "pareto.csv": ("report", "--resume"),
    "summary.json": ("report", "--resume"),
}


def problem_of(name: str, damage: str) -> str:
    kind = name if name in PROBLEMS else name.rsplit(".", 1)[1]
    return PROBLEMS[kind][damage]


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("name", list(READERS))
def test_a_damaged_run_file_is_named_and_nothing_is_overwritten(base, tmp_path, capsys, name, damage):
    """Each file read back, damaged four ways: one line naming it, the problem, a remedy; exit 2.

    A damaged checkpoint is only an error when the previous one is damaged
    too (alone, it is the fallback case below), so both are damaged here.
    """
    run = copy_of(base, tmp_path)
    damaged = [name, rundir.PREVIOUS_CHECKPOINT] if name == rundir.CHECKPOINT else [name]
    for target in damaged:
        (run / target).write_bytes(DAMAGE[damage]((run / target).read_bytes(), target))
    before = contents(run)
    command, remedy = READERS[name]
    argv = run_command(run, "--resume") if command == "resume" else ["report", str(run)]
    err = one_line_error(capsys, argv)
    assert f"{run / name}: " in err and problem_of(name, damage) in err and remedy in err, err
    assert contents(run) == before


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_featureset_is_named(base, tmp_path, capsys, damage):
    """The FeatureSet a run names (--features), damaged: run and report refuse it, exit 2."""
    good = embedded.digits().save(tmp_path / "digits.npz")
    bad = tmp_path / "features.npz"
    bad.write_bytes(DAMAGE[damage](good.read_bytes(), "features.npz"))
    run = copy_of(base, tmp_path)
    before = contents(run)
    for argv in (["run", *FLAGS, "--features", str(bad), "--out", str(tmp_path / "new")],
                 ["report", str(run), "--features", str(bad)]):
        err = one_line_error(capsys, argv)
        assert f"{bad}: " in err, err
    assert contents(run) == before and not (tmp_path / "new").exists()


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(base, tmp_path, capsys):
    """checkpoint.npz truncated: resume says so, keeps it aside, reruns from the previous one."""
    run = copy_of(base, tmp_path)
    damaged = (run / rundir.CHECKPOINT).read_bytes()[:1000]
    (run / rundir.CHECKPOINT).write_bytes(damaged)
    assert cli.main(run_command(run, "--resume")) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "resuming from checkpoint.previous.npz (generation 2)" in err, err
    assert (run / "checkpoint.damaged.npz").read_bytes() == damaged
    assert_same_front(run, base)


# --------------------------------------------------------------------------- kills


def kill_at_random_moment(directory: Path, seed: int) -> subprocess.CompletedProcess:
    """Starts the base run's command and SIGKILLs it after a seeded number of generations and delay."""
    rng = np.random.default_rng(seed)
    after_lines, delay = int(rng.integers(1, 3)), float(rng.uniform(0.0, 0.4))
    child = subprocess.Popen([sys.executable, "-m", "evojax_prune.cli", *run_command(directory)],
                             stderr=subprocess.PIPE, text=True)
    history = directory / "history.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= after_lines:
            break
        time.sleep(0.02)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    return child


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_moment_then_resume_gives_the_same_front(base, tmp_path, seed):
    run = tmp_path / "run"
    child = kill_at_random_moment(run, seed)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    assert not (run / "summary.json").exists()
    assert cli.main(run_command(run, "--resume")) == 0
    assert_same_front(run, base)


# A child that runs the base command and SIGKILLs itself inside the third checkpoint write:
# "writing", halfway through the new file's bytes; "renamed", after the current checkpoint
# became checkpoint.previous.npz and before the new one took its place.
DYING_CHILD = textwrap.dedent("""
    import io, os, signal, sys
    import numpy as np
    from evojax_prune.cli import main as cli

    moment, real_savez, real_replace, calls = sys.argv[1], np.savez, os.replace, []

    def savez(stream, **arrays):
        calls.append(1)
        if moment == "writing" and len(calls) == 3:
            buffer = io.BytesIO()
            real_savez(buffer, **arrays)
            stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            stream.flush()
            os.fsync(stream.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_savez(stream, **arrays)

    def replace(source, target):
        real_replace(source, target)
        if moment == "renamed" and len(calls) == 3 and str(target).endswith("checkpoint.previous.npz"):
            os.kill(os.getpid(), signal.SIGKILL)

    np.savez, os.replace = savez, replace
    cli.main(sys.argv[2:])
""")


@pytest.mark.parametrize("moment", ["writing", "renamed"])
def test_sigkill_during_a_checkpoint_write_then_resume_gives_the_same_front(base, tmp_path, capsys, moment):
    run = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", DYING_CHILD, moment, *run_command(run)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    leftovers = [path.name for path in run.iterdir() if path.name.endswith(".tmp")]
    assert leftovers if moment == "writing" else not (run / rundir.CHECKPOINT).exists()
    assert cli.main(run_command(run, "--resume")) == 0
    err = capsys.readouterr().err
    # Killed between the renames, the newest checkpoint is missing: resume says it used the previous.
    assert ("resuming from checkpoint.previous.npz" in err) == (moment == "renamed"), err
    assert not [path.name for path in run.iterdir() if path.name.endswith(".tmp")]
    assert_same_front(run, base)


# --------------------------------------------------------------------------- full disk, read-only


@pytest.mark.parametrize(("failing", "occurrence"), [("checkpoint.npz", 2), ("pareto.npz", 1)])
def test_a_full_disk_leaves_the_previous_files_intact(base, tmp_path, capsys, monkeypatch,
                                                       failing, occurrence):
    """os.fsync fails with ENOSPC on the n-th write of one file: one line, exit 2, no temp file left,
    every other file complete; resume then reaches the base run's front."""
    real_fsync, seen = os.fsync, []

    def fsync(descriptor):
        if failing in os.readlink(f"/proc/self/fd/{descriptor}"):
            seen.append(1)
            if len(seen) == occurrence:
                raise OSError(28, "No space left on device")
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "run"
    err = one_line_error(capsys, run_command(run))
    assert f"{run / failing}: cannot be written (No space left on device)" in err, err
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]
    checkpoint = np.load(run / rundir.CHECKPOINT)
    # The checkpoint the failed write would have replaced is still there, whole.
    assert int(checkpoint["generation"]) == (0 if failing == "checkpoint.npz" else 3)
    assert not (run / "summary.json").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert cli.main(run_command(run, "--resume")) == 0
    assert_same_front(run, base)


def interpreter(environment: dict[str, str], user: dict[str, int], cwd: Path) -> list[str]:
    """A Python that ``user`` may run with this package importable.

    This one, unless it lies in a directory that user cannot enter (a pyenv
    under /root): then the system's Python of the same version, given this
    environment's site-packages and source tree (same ABI, same packages).
    """
    import sysconfig

    import evojax_prune

    if not user:
        return [sys.executable]
    candidates = [[sys.executable], [f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]]
    paths = [sysconfig.get_paths()["purelib"], str(Path(evojax_prune.__file__).parents[1])]
    for candidate in candidates:
        extra = {} if candidate[0] == sys.executable else {"PYTHONPATH": os.pathsep.join(paths)}
        try:
            probe = subprocess.run([*candidate, "-c", "import evojax_prune.cli.main"], capture_output=True,
                                   env={**environment, **extra}, cwd=cwd, timeout=120, **user)
        except OSError:
            continue
        if probe.returncode == 0:
            environment.update(extra)
            return candidate
    pytest.skip("running as root, and the user nobody cannot import this package (the checkout or "
                "its interpreter lies in a directory only root may enter)")


def test_a_read_only_run_directory_is_refused_before_any_work(base):
    """report and run --resume on a directory this user cannot write: one line, exit 2, untouched.

    As root (which writes anywhere) the commands run as the user nobody."""
    scratch = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        scratch.chmod(0o755)
        run = Path(shutil.copytree(base, scratch / "run"))
        cache = scratch / "cache"
        cache.mkdir(mode=0o777)
        cache.chmod(0o777)
        for path in run.iterdir():
            path.chmod(0o444)
        run.chmod(0o555)
        before = contents(run)
        environment = {**os.environ, "HOME": str(cache), "XDG_CACHE_HOME": str(cache),
                       "EVOJAX_PRUNE_CACHE_DIR": str(cache), "MPLCONFIGDIR": str(cache)}
        user = {"user": 65534, "group": 65534} if os.geteuid() == 0 else {}
        python = interpreter(environment, user, scratch)
        for argv in (["report", str(run)], run_command(run, "--resume")):
            child = subprocess.run([*python, "-m", "evojax_prune.cli", *argv], capture_output=True,
                                   text=True, timeout=300, env=environment, cwd=scratch, **user)
            assert child.returncode == 2, child.stderr
            assert f"{run}: the run directory is not writable" in child.stderr, child.stderr
            assert len(child.stderr.strip().splitlines()) == 1, child.stderr
        assert contents(run) == before
    finally:
        for path in scratch.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(scratch)


# --------------------------------------------------------------------------- refusals change no byte


QUICK = config.preset("quick").replace(search={"population_size": 4, "generations": 3})
MAX_SEED = 2**32 - 1


def one_class_features(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = lambda n: rng.normal(size=(n, 64)).astype(np.float32)
    labels = lambda n: np.zeros(n, np.int32)
    return FeatureSet(x_train=rows(8), y_train=labels(8), x_val=rows(4), y_val=labels(4), x_test=rows(4),
                      y_test=labels(4), ood_val=rows(4), ood_test=rows(4), class_names=("only",),
                      metadata={"name": "single"}).save(path)


# Commands that --overwrite the base run and must be refused before anything is deleted:
# (flags, what the one-line error says). {dir}: the test's scratch directory.
REFUSED_OVERWRITES = {
    "seed of 67 bits": (["--seed", "99999999999999999999"], "--seed 99999999999999999999: the seed must be"),
    "seed 2**32": (["--seed", "4294967296"], "--seed 4294967296: the seed must be"),
    "negative seed": (["--seed", "-1"], "--seed -1: the seed must be"),
    "seeds past 32 bits": (["--seed", "4294967295", "--runs", "2"], "4294967295 .. 4294967296 (2 runs)"),
    "initial masks a CSV": (["--initial-masks", "{dir}/masks.csv"], "masks.csv: not a .npy or .npz file"),
    "initial masks too narrow": (["--initial-masks", "{dir}/narrow.npy"],
                                 "narrow.npy: masks are bool (2, 3)"),
    "one class": (["--features", "{dir}/single.npz"], "single.npz: has 1 class"),
    "devices not there": (["--devices", "64"], "64"),
    "coordinator without a port": (["--coordinator-address", "localhost", "--num-processes", "2",
                                    "--process-id", "0"],
                                   "--coordinator-address 'localhost': expected HOST:PORT"),
}


@pytest.mark.parametrize("case", list(REFUSED_OVERWRITES))
def test_a_refused_overwrite_changes_no_byte_of_the_old_run(base, tmp_path, capsys, case):
    """Issue 33 (2): `run --out A --overwrite --seed 99999999999999999999` exited 1 and left A empty.

    Every check comes before the old run's files are deleted: each refusal is one
    line, exit 2, and the old run directory holds the same files, byte for byte.
    """
    (tmp_path / "masks.csv").write_text("0,1,0,1\n1,1,0,0\n")
    np.save(tmp_path / "narrow.npy", np.ones((2, 3), bool))
    one_class_features(tmp_path / "single.npz")
    run = copy_of(base, tmp_path)
    before = digests(run)
    flags, message = REFUSED_OVERWRITES[case]
    flags = [flag.format(dir=tmp_path) for flag in flags]
    err = one_line_error(capsys, run_command(run, "--overwrite", *flags))
    assert message in err, err
    assert digests(run) == before


def test_a_refused_overwrite_from_python_changes_no_byte_of_the_old_run(base, tmp_path):
    """run_search(overwrite=True) checks the seed, the devices and the warm start before it deletes."""
    run = copy_of(base, tmp_path)
    before = digests(run)
    digits = embedded.digits()
    for options, message in ((dict(seed=2**32), "seed must be an integer in"),
                             (dict(seed=10**20), "seed must be an integer in"),
                             (dict(config=QUICK.replace(engine={"devices": 64})), "64"),
                             (dict(initial_masks=np.ones((2, 3))), "masks are")):
        options = {"config": QUICK, **options}
        with pytest.raises(ValueError, match=message):
            run_search(digits, options.pop("config"), out_dir=run, overwrite=True, **options)
        assert digests(run) == before, options


def test_a_refused_group_overwrite_changes_no_byte_of_any_run(base, tmp_path):
    """run_searches(overwrite=True) deleted run-0 before it found run-1 could not be overwritten, and
    checked its runs' seeds and warm start only after deleting them all."""
    group = tmp_path / "group"
    for index in range(2):
        shutil.copytree(base, group / f"run-{index}")
    (group / "runs.json").write_text("{}")
    (group / "run-1" / "notes.txt").write_text("not a run's file")
    digits = embedded.digits()
    before = digests(group)
    with pytest.raises(rundir.RunDirectoryError, match=r"run-1: will not overwrite.*notes\.txt"):
        run_searches(digits, QUICK, runs=2, out_dir=group, overwrite=True)
    assert digests(group) == before
    (group / "run-1" / "notes.txt").unlink()
    before = digests(group)
    for options, message in ((dict(seed=MAX_SEED), r"\(2 runs\)"),
                             (dict(initial_masks=np.ones((2, 3))), "masks are"),
                             (dict(config=QUICK.replace(engine={"devices": 64})), "64")):
        options = {"config": QUICK, **options}
        with pytest.raises(ValueError, match=message):
            run_searches(digits, options.pop("config"), runs=2, out_dir=group, overwrite=True, **options)
        assert digests(group) == before, options


# --------------------------------------------------------------------------- killed before a checkpoint

# A child that runs the base command and SIGKILLs itself in the on_generation callback of
# generation 0, before that generation's history line and checkpoint are written.
KILLED_AT_GENERATION_0 = textwrap.dedent("""
    import os, signal, sys
    from evojax_prune.cli import main as cli
    from evojax_prune.search import progress

    def update(self, record):
        os.kill(os.getpid(), signal.SIGKILL)

    progress.SearchProgress.update = update
    cli.main(sys.argv[1:])
""")


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(base, tmp_path, capsys):
    """Issue 33 (5): only config.json was left; --resume said "nothing to resume" and a plain run
    "directory exists" (neither named --overwrite). It starts again: the uninterrupted front."""
    run = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", KILLED_AT_GENERATION_0, *run_command(run)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert sorted(path.name for path in run.iterdir()) == ["config.json"]
    before = digests(run)
    # Another run's settings are still refused, and change nothing.
    err = one_line_error(capsys, [*run_command(run, "--resume"), "--population", "6"])
    assert "--population 6: the run in" in err and "search.population_size = 4" in err, err
    assert digests(run) == before
    assert cli.main(run_command(run, "--resume")) == 0
    assert_same_front(run, base)


def test_a_run_killed_between_its_first_history_line_and_checkpoint_resumes_from_the_start(base, tmp_path):
    """config.json and generation 0's history line, no checkpoint: run again from the start."""
    run = copy_of(base, tmp_path)
    for path in run.iterdir():
        if path.name not in ("config.json", "history.jsonl"):
            path.unlink()
    history = run / "history.jsonl"
    history.write_text(history.read_text().splitlines(keepends=True)[0])
    assert cli.main(run_command(run, "--resume")) == 0
    assert_same_front(run, base)


def test_a_run_without_checkpoints_past_generation_0_is_refused_naming_overwrite(base, tmp_path, capsys):
    """Both checkpoints gone after three generations: refused (never silently restarted), naming
    --overwrite, and nothing is changed; an empty directory is refused naming the run without --resume."""
    run = copy_of(base, tmp_path)
    for name in (rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT):
        (run / name).unlink()
    before = digests(run)
    err = one_line_error(capsys, run_command(run, "--resume"))
    assert f"{run}: nothing to resume (no checkpoint.npz although it holds pareto.csv" in err, err
    assert "--overwrite" in err, err
    assert digests(run) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    err = one_line_error(capsys, run_command(empty, "--resume"))
    assert f"{empty}: nothing to resume (no config.json" in err and "without --resume" in err, err
    assert list(empty.iterdir()) == []


# --------------------------------------------------------------------------- diverged heads


def test_diverged_heads_are_counted_warned_about_and_ranked_last(tmp_path):
    """Learning rate 1e4 on the digits: every head's loss runs into the thousands."""
    diverging = config.preset("quick").replace(
        head={"hidden": 16}, train={"max_epochs": 6, "patience": 3, "learning_rate": 1e4},
        search={"population_size": 4, "generations": 1},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_search(embedded.digits(), diverging, seed=0, out_dir=tmp_path / "run")
    messages = [str(warning.message) for warning in caught if warning.category is RuntimeWarning]
    assert len(messages) == 1 and "Lower train.learning_rate (now 10000)" in messages[0], messages
    trained_before = 0
    for record in result.history:  # every head trained in a generation is counted in it
        assert record["diverged"] == record["trained"] - trained_before > 0
        trained_before = record["trained"]
    assert "diverged 4" in generation_line(result.history[0])
    np.testing.assert_array_equal(result.validation["diverged"], 1.0)
    np.testing.assert_array_equal(result.objectives, 1.0)
    assert result.hypervolume == 0.0
    table = (tmp_path / "run" / "pareto.csv").read_text().splitlines()
    assert table[0].endswith(",diverged") and all(row.endswith(",1") for row in table[1:])


def test_a_diverged_head_ranks_behind_every_head_that_learned():
    """objectives(): (1, 1, 1) for a diverged head whatever its chance-level metrics."""
    from evojax_prune.search.ranking import non_dominated_rank

    values = {"accuracy": np.array([0.9, 0.1, 0.5]), "mem": np.array([0.5, 0.01, 0.9]),
              "auroc": np.array([0.8, 0.5, 0.6]), "auroc_paper": np.zeros(3),
              "diverged": np.array([0.0, 1.0, 0.0])}
    points = objectives(values, "exact")
    np.testing.assert_allclose(points, [[0.1, 0.5, 0.2], [1.0, 1.0, 1.0], [0.5, 0.9, 0.4]])
    without = {name: value for name, value in values.items() if name != "diverged"}
    np.testing.assert_allclose(objectives(without, "exact")[1], [0.9, 0.01, 0.5])  # older records
    ranks = np.asarray(non_dominated_rank(points.astype(np.float32)))
    assert ranks[1] > ranks[0] and ranks[1] > ranks[2]
