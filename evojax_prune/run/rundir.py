"""The run directory: its format, written atomically and read back validated.

Layout (format ``FORMAT``):
  config.json              the resolved configuration, seed, data set, package versions, JAX devices,
                           and ``training_plan``: how the largest bucket trains (``plan.TrainingPlan``);
                           ``stopping``: the run controls of the latest session (time budget, hv
                           patience; not compared on resume); ``initial_masks``: the warm start's
                           source, count and SHA-256, or null
  history.jsonl            one JSON line per generation (``train_calls``: [padded, trained] per call)
  checkpoint.npz           everything needed to resume after the last finished generation
  checkpoint.previous.npz  the generation before it, kept in case the newest is damaged
  pareto.csv               the final front, one row per member (validation and test metrics;
                           ``ood_score``: the OoD score the AUROC columns are of)
  pareto.npz               the front's masks and trained head parameters, and the baseline's
  summary.json             baseline, front, hypervolume, wall time, ``stopping``: why the search stopped
                           (generations, time_budget or hv_patience) and after which generation

Every file is replaced atomically (``atomic.write_atomically``), so a run killed
at any moment leaves complete files from the last finished generation. Every
file read back is validated here, and damage is a ``RunFileError`` naming the
file, what is wrong with it and what to do, before anything is overwritten.
A file written before formats were numbered counts as format 1.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import os
import platform
import shutil
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune.config import RunConfig
from evojax_prune.io import atomic
from evojax_prune.result import METRIC_NAMES, REFERENCE_POINT
from evojax_prune.run import fingerprint as fingerprints
from evojax_prune.version import __version__

FORMAT = 1
CHECKPOINT = "checkpoint.npz"
PREVIOUS_CHECKPOINT = "checkpoint.previous.npz"
RUN_FILES = (
    "config.json", "history.jsonl", CHECKPOINT, PREVIOUS_CHECKPOINT, "pareto.csv", "pareto.npz",
    "summary.json",
    # written by ``evojax-prune report`` and ``evojax-prune explain``
    "report.md", "ensembles.json", "published.json", "figures", "explain",
)
RESULT_FILES = ("pareto.csv", "pareto.npz", "summary.json")  # written together when a run ends
CONFIG_KEYS = ("config", "seed", "features", "num_features", "num_classes", "strategy")
HISTORY_KEYS = ("generation", "evaluations", "trained", "front_size", "hypervolume")
PARAM_NAMES = ("hidden_kernel", "output_kernel", "output_bias")
SECOND_KERNEL = "second_kernel"  # in pareto.npz for heads of two hidden layers only
CSV_METRICS = ("accuracy", "auroc", "auroc_paper", "fpr95", "aupr_in", "aupr_out")
CSV_COLUMNS = ("member", "active_features", "mem",
               *(f"{split}_{name}" for name in CSV_METRICS for split in ("val", "test")),
               "epochs", "ood_score", "diverged")
# The columns of earlier versions: before "ood_score" (their OoD score is ODIN), and before "diverged".
OLDER_CSV_COLUMNS = ((*CSV_COLUMNS[:-2], "diverged"), CSV_COLUMNS[:-2])


class RunDirectoryError(ValueError):
    """The output directory cannot be used as asked; the message says why and what to do."""


class RunFileError(RunDirectoryError):
    """A file of a run directory is missing or damaged: ``file: problem; remedy``."""

    def __init__(self, file: Path, problem: str, remedy: str):
        super().__init__(f"{file}: {problem}; {remedy}")
        self.file, self.problem, self.remedy = Path(file), problem, remedy


class ForeignFileError(RunFileError):
    """A file of a run directory belongs to another run (its fingerprint, ``fingerprint.py``)."""


def restart_remedy(path: Path) -> str:
    return "it cannot be rebuilt: start the run again with overwrite=True (it deletes the run's files)"


def results_remedy(path: Path) -> str:
    return f"write the results again from the checkpoint: resume_search('{path}')"


# --------------------------------------------------------------------------- the directory


def prepare(path: str | Path, *, resume: bool, overwrite: bool, check_only: bool = False) -> Path:
    """Checks (and creates) the run directory before anything is computed.

    An existing, non-empty directory is refused unless ``resume`` (continue the
    run in it) or ``overwrite`` (delete the earlier run's files first) is given;
    ``overwrite`` refuses a directory holding files that are not a run's. A
    resumed directory loses the temporary files a killed writer left.

    Every check comes before anything is deleted or created; ``check_only``
    runs the checks alone, so that a search checks the directory first, then
    everything else, and deletes only once all of it passed (a refused command
    changes no byte of a run directory).
    """
    path = Path(path)
    if resume and overwrite:
        raise RunDirectoryError("resume=True and overwrite=True exclude each other")
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path}: exists and is not a directory")
    existing = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if resume:
        resume_point(path)
        require_writable(path, "resume the run")
        if not check_only:
            for name in existing:
                if name.startswith(".") and name.endswith(".tmp") and name[1:].startswith(RUN_FILES):
                    (path / name).unlink(missing_ok=True)  # a writer killed halfway
        return path
    if existing:
        if not overwrite:
            raise RunDirectoryError(
                f"{path}: directory exists and is not empty; pass resume=True to continue the run in it "
                "or overwrite=True to replace it"
            )
        foreign = [name for name in existing if not _is_run_file(name) and not name.startswith(".")]
        if foreign:
            raise RunDirectoryError(
                f"{path}: will not overwrite, it holds files that are not a run's: {foreign[:5]}"
            )
        require_writable(path, "overwrite the run")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not _writable(parent):
        raise RunDirectoryError(f"{path}: cannot write here ({parent} is not writable)")
    if check_only:
        return path
    for name in existing:
        target = path / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirectoryError(f"{path}: cannot create the run directory ({error.strerror})") from None
    return path


def resume_point(path: Path) -> str:
    """Where a resumed run in ``path`` continues: ``"checkpoint"``, or ``"start"`` for a run
    killed before its first checkpoint (config.json, and at most generation 0's history line, no
    checkpoint and no results): it runs again from the beginning, as deterministic as uninterrupted.
    Anything else is refused, naming ``--overwrite``."""
    path = Path(path)
    if any((path / name).is_file() for name in (CHECKPOINT, PREVIOUS_CHECKPOINT)):
        return "checkpoint"
    if not (path / "config.json").is_file():
        raise RunDirectoryError(f"{path}: nothing to resume (no config.json, no {CHECKPOINT}); start the "
                                "run with resume=False")
    results = [name for name in RESULT_FILES if (path / name).exists()]
    history = path / "history.jsonl"
    lines = len(history.read_bytes().splitlines()) if history.is_file() else 0
    if results or lines > 1:
        found = ", ".join(results + ([f"history.jsonl of {lines} generations"] if lines > 1 else []))
        raise RunDirectoryError(f"{path}: nothing to resume (no {CHECKPOINT} although it holds {found}); "
                                f"start the run again with overwrite=True (it deletes the run's files)")
    return "start"


GROUP_FILES = ("runs.json", "merged_pareto.csv")  # beside run-0 .. run-{R-1} (``run_searches(runs=R)``)
GROUP_REPORT_FILES = ("report.md", "figures")  # written by ``evojax-prune report GROUP_DIR``


def group_member_names(path: str | Path) -> list[str]:
    """The names of the run directories ``run-<i>`` in ``path`` (a group's members), in no order."""
    path = Path(path)
    if not path.is_dir():
        return []
    return [entry.name for entry in path.iterdir()
            if entry.is_dir() and entry.name.startswith("run-") and entry.name[4:].isdigit()]


def group_members(path: str | Path, runs: int) -> list[Path]:
    """The run directories of a group of ``runs`` runs: ``path/run-0`` .. ``path/run-{R-1}``."""
    return [Path(path) / f"run-{index}" for index in range(runs)]


def prepare_group(path: str | Path, runs: int, *, resume: bool, overwrite: bool,
                  check_only: bool = False) -> list[Path]:
    """``prepare`` for a group of runs: the group directory and every member, all checked first.

    A group directory holds only its members (``run-<i>``) and ``GROUP_FILES``.
    Resuming needs every member to be resumable (``resume_point``) and no other
    members; a new group refuses an existing, non-empty directory unless
    ``overwrite``, which replaces members and group files and nothing else.
    Nothing is deleted before every member passed its checks; ``check_only``:
    the checks alone.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path}: exists and is not a directory")
    existing = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    members = group_members(path, runs)
    names = {member.name for member in members}
    others = [name for name in existing if name not in names and name not in GROUP_FILES + GROUP_REPORT_FILES
              and not name.startswith(".")]
    replace = False
    if resume:
        if others:
            raise RunDirectoryError(f"{path}: cannot resume {runs} runs, it also holds {others[:5]} "
                                    "(started with another runs=?)")
    elif existing:
        if not overwrite:
            raise RunDirectoryError(f"{path}: directory exists and is not empty; pass resume=True to "
                                    "continue the runs in it or overwrite=True to replace them")
        if others:
            raise RunDirectoryError(f"{path}: will not overwrite, it holds files that are not its runs': "
                                    f"{others[:5]}")
        replace = True
    for member in members:  # every member checked before any is touched
        prepare(member, resume=resume, overwrite=replace, check_only=True)
    if check_only:
        return members
    if replace:
        for member in members:
            if member.exists():
                prepare(member, resume=False, overwrite=True)
        for name in GROUP_FILES + GROUP_REPORT_FILES:
            target = path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return [prepare(member, resume=resume, overwrite=False) for member in members]


def write_merged(path: Path, merged) -> None:
    """merged_pareto.csv and runs.json of a ``lockstep.RunsResult``, in that order."""
    validation, test = merged.metrics("validation"), merged.metrics("test")
    ood_score = merged.runs[0].config.ood.score
    diverged = validation.get("diverged", np.zeros(len(merged.merged_run)))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(("run", *CSV_COLUMNS))  # pareto.csv's columns, each row's run first
    masks = merged.masks
    for index, (run, member) in enumerate(zip(merged.merged_run, merged.merged_member, strict=True)):
        row = [int(run), int(member), int(masks[index].sum()), float(validation["mem"][index])]
        for name in CSV_METRICS:
            row += [float(validation[name][index]), float(test[name][index])]
        row += [int(validation["epochs"][index]), ood_score, int(diverged[index])]
        writer.writerow([f"{value:.6f}" if isinstance(value, float) else value for value in row])
    runs = {
        "format": FORMAT,
        "runs": [{"directory": f"run-{index}", "seed": result.seed, "hypervolume": result.hypervolume,
                  "front_size": len(result.masks), "stopping": result.stopping,
                  fingerprints.LINE_KEY: ((result.provenance or {}).get(fingerprints.KEY) or {}).get("id")}
                 for index, result in enumerate(merged.runs)],
        "merged": {"size": len(merged.merged_run), "hypervolume": merged.hypervolume,
                   "hypervolume_reference": list(REFERENCE_POINT),
                   "run": merged.merged_run.tolist(), "member": merged.merged_member.tolist()},
        "run_hypervolumes": merged.spread(),
    }
    # A finished group resumed merges the same runs again: files already so are left untouched.
    for name, text in (("merged_pareto.csv", table.getvalue()),
                       ("runs.json", atomic.json_text(runs))):
        file = path / name
        if not (file.is_file() and file.read_bytes() == text.encode("utf-8")):
            atomic.write_text(file, text)


def require_writable(path: Path, purpose: str) -> None:
    """Refuses a directory this process cannot write, before any work is done."""
    if not _writable(path):
        raise RunDirectoryError(
            f"{path}: the run directory is not writable, cannot {purpose}; "
            "copy it somewhere writable or change its permissions"
        )


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or (name.startswith("checkpoint.damaged") and name.endswith(".npz"))


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


PACKAGES = ("evojax-prune", "jax", "jaxlib", "flax", "optax", "evosax", "numpy", "moocore")


def environment(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Python, package versions (``PACKAGES`` and ``extra_packages``) and devices.

    Recorded beside a run's configuration, and by every benchmark.
    """
    import jax

    versions = {}
    for package in PACKAGES + tuple(extra_packages):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "devices": [str(device) for device in jax.devices()],
        "processes": jax.process_count(),
        "backend": jax.devices()[0].platform,
    }


# --------------------------------------------------------------------------- writing


def write_config(path: Path, settings: dict[str, Any]) -> None:
    """config.json: ``settings`` (``CONFIG_KEYS``), the format and the environment."""
    atomic.write_json(path / "config.json", {**settings, "format": FORMAT, "environment": environment()})


def write_config_fields(path: Path, recorded: dict[str, Any], **fields: Any) -> None:
    """config.json as ``recorded`` (``read_config``) with ``fields`` replaced, e.g. a resumed run's
    ``stopping``; never a field resume compares (``CONFIG_KEYS``)."""
    changed = sorted(set(fields) & set(CONFIG_KEYS))
    if changed:
        raise ValueError(f"config.json: {changed} are what a run is, they cannot change")
    atomic.write_json(path / "config.json", {**recorded, **fields})


def write_history(path: Path, history: list[dict[str, Any]],
                  fingerprint: dict[str, Any] | None = None) -> None:
    """history.jsonl: one line per generation, each with the run's ``run_id`` (``fingerprint.LINE_KEY``)."""
    tag = {} if fingerprint is None else {fingerprints.LINE_KEY: fingerprint["id"]}
    atomic.write_text(path / "history.jsonl", "".join(json.dumps({**row, **tag}) + "\n" for row in history))


def write_checkpoint(path: Path, state_leaves: list[np.ndarray], cache_state: dict[str, np.ndarray], *,
                     trained_masks: int, elapsed: float, generation: int,
                     fingerprint: dict[str, Any] | None = None) -> None:
    """checkpoint.npz; the one it replaces becomes checkpoint.previous.npz.

    The new file is complete on disk before either rename, so a kill or a full
    disk at any moment leaves at least one complete checkpoint of the last two
    generations.
    """
    arrays = {f"state_{i}": np.asarray(leaf) for i, leaf in enumerate(state_leaves)}
    arrays.update(cache_state)
    arrays.update(format=np.asarray(FORMAT), trained_masks=np.asarray(trained_masks),
                  elapsed_seconds=np.asarray(elapsed), generation=np.asarray(generation))
    if fingerprint is not None:
        arrays[fingerprints.KEY] = fingerprints.as_array(fingerprint)
    atomic.write_atomically(path / CHECKPOINT, lambda stream: np.savez(stream, **arrays),
                            keep_previous=path / PREVIOUS_CHECKPOINT)


# --------------------------------------------------------------------------- reading


def _check_format(file: Path, version: Any, remedy: str) -> None:
    if isinstance(version, np.ndarray):
        version = version.item() if version.shape == () else version.tolist()
    if type(version) is not int or version != FORMAT:
        raise RunFileError(file, f"format version {version!r} is not supported "
                                 f"(evojax-prune {__version__} reads format {FORMAT})", remedy)


def _read_text(file: Path, remedy: str) -> str:
    try:
        return file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RunFileError(file, "missing", remedy) from None
    except UnicodeDecodeError as error:
        raise RunFileError(file, f"not UTF-8 text (byte {error.start})", remedy) from None


def read_json_file(file: Path, remedy: str) -> dict[str, Any]:
    text = _read_text(file, remedy)
    if not text.strip():
        raise RunFileError(file, "empty", remedy)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        problem = (f"not valid JSON ({error.msg.removesuffix(' at')}, line {error.lineno} column "
                   f"{error.colno}: truncated or overwritten?)")
        raise RunFileError(file, problem, remedy) from None
    if not isinstance(data, dict):
        raise RunFileError(file, f"expected a JSON object, found {type(data).__name__}", remedy)
    _check_format(file, data.get("format", 1), remedy)
    return data


def require_keys(file: Path, data: dict[str, Any], keys: tuple[str, ...], remedy: str) -> None:
    missing = [key for key in keys if key not in data]
    if missing:
        raise RunFileError(file, f"lacks {', '.join(missing)} (written by another version?)", remedy)


def read_npz_file(file: Path, remedy: str) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an archive")
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise RunFileError(file, "missing", remedy) from None
    except Exception as error:  # np.load raises BadZipFile, zlib.error, EOFError, OSError, ValueError...
        problem = "empty" if file.stat().st_size == 0 else (
            f"not a readable .npz archive ({type(error).__name__}: {error}; truncated or overwritten?)")
        raise RunFileError(file, problem, remedy) from None
    _check_format(file, arrays.pop("format", 1), remedy)
    return arrays


def read_npz_fingerprint(file: Path, arrays: dict[str, np.ndarray], remedy: str) -> dict[str, Any] | None:
    """The fingerprint an .npz of a run holds (popped from ``arrays``), None for one from before them."""
    try:
        return fingerprints.from_array(arrays.pop(fingerprints.KEY, None))
    except ValueError as error:
        raise RunFileError(file, str(error), remedy) from None


def shape_problem(name: str, array: np.ndarray, shape: tuple[int | None, ...], kind: str) -> str | None:
    """Why ``array`` is not of ``shape`` (None: any size) and dtype kind, or None."""
    fits = array.ndim == len(shape) and all(want is None or want == got
                                            for want, got in zip(shape, array.shape, strict=True))
    if fits and array.dtype.kind in kind:
        return None
    wanted = "(" + ", ".join("n" if size is None else str(size) for size in shape) + ")"
    return f"{name} is {array.dtype} {array.shape}, expected {wanted} of kind {kind!r}"


def read_config(path: Path) -> dict[str, Any]:
    """config.json, validated: its keys, format and configuration (``RunConfig.from_dict``)."""
    file = path / "config.json"
    remedy = restart_remedy(path)
    recorded = read_json_file(file, remedy)
    require_keys(file, recorded, CONFIG_KEYS, remedy)
    try:
        RunConfig.from_dict(recorded["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise RunFileError(file, f"its configuration is invalid ({error})", remedy) from None
    for name in ("num_features", "num_classes", "seed"):
        if type(recorded[name]) is not int:
            raise RunFileError(file, f"{name} is {recorded[name]!r}, expected an integer", remedy)
    return recorded


def read_history(path: Path, fingerprint: dict[str, Any] | None = None, *,
                 needed: int | None = None) -> list[dict[str, Any]]:
    """history.jsonl, validated: one object per generation, in order from generation 0.

    Args:
      path: the run directory.
      fingerprint: the run's (config.json's); a line of another run is refused
        by name. Each line's ``run_id`` is checked and dropped.
      needed: how many lines must be readable (None: all). A damaged line past
        them cuts the history there, with a ``RuntimeWarning`` naming it: what
        a reader needs is whole, and the rest is what it lost.
    """
    file = path / "history.jsonl"
    remedy = (f"restore {file.name} from a copy of the run, or start the run again with overwrite=True "
              "(it deletes the run's files)")
    text = _read_text(file, remedy)
    history = []
    for number, line in enumerate(text.splitlines(), start=1):
        problem, record = _history_line(line, number, fingerprint)
        if problem and needed is not None and number > needed:
            warnings.warn(f"{file}: {problem}; read generations 0 .. {number - 2} only", RuntimeWarning,
                          stacklevel=2)
            break
        if problem:
            raise RunFileError(file, problem, remedy)
        history.append(record)
    if not history:
        raise RunFileError(file, "empty", remedy)
    return history


def _history_line(line: str, number: int, fingerprint: dict[str, Any] | None):
    """(problem, record) of line ``number`` of history.jsonl: one of them None."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return f"line {number} is not valid JSON ({error.msg}: truncated or overwritten?)", None
    if not isinstance(record, dict):
        return f"line {number} is not a JSON object", None
    missing = [key for key in HISTORY_KEYS if key not in record]
    if missing:
        return f"line {number} lacks {', '.join(missing)} (written by another version?)", None
    if record["generation"] != number - 1:
        return f"line {number} is generation {record['generation']!r}, expected {number - 1}", None
    run_id = record.pop(fingerprints.LINE_KEY, None)
    if fingerprint is not None and run_id is not None and run_id != fingerprint["id"]:
        return (f"line {number} belongs to another run (run_id {run_id!r}, config.json's "
                f"{fingerprint['id']!r})"), None
    return None, record


def check_fingerprint(file: Path, found: dict[str, Any] | None, expected: dict[str, Any] | None, *,
                      expected_from: str = "config.json's") -> None:
    """Refuses ``file`` when its fingerprint is another run's (``fingerprint.mismatch``)."""
    problem = fingerprints.mismatch(found, expected, expected_from=expected_from)
    if problem:
        raise ForeignFileError(file, problem, foreign_remedy(file))


def check_same_run(found: dict[Path, dict[str, Any] | None]) -> None:
    """Refuses the file whose fingerprint is not its run's, naming it and the parts that differ.

    ``found``: file -> its fingerprint (None: none, or unreadable: the file's
    own reader reports damage). The run's fingerprint is the one most files
    carry (a tie: the first file's), so a config.json copied over from
    another run is named as such, not the files that were always there.
    """
    known = {Path(file): value for file, value in found.items() if value is not None}
    counts = collections.Counter(value["id"] for value in known.values())
    if len(counts) <= 1:
        return
    first = next(iter(known.values()))["id"]
    majority = max(counts, key=lambda run_id: (counts[run_id], run_id == first))
    agreeing = [file.name for file, value in known.items() if value["id"] == majority]
    reference = max((value for value in known.values() if value["id"] == majority), key=len)
    for file, value in known.items():
        if value["id"] != majority:
            theirs = " and ".join(agreeing) + ("'s" if len(agreeing) == 1 else "'")
            check_fingerprint(file, value, reference, expected_from=theirs)


def peek_fingerprint(file: Path) -> dict[str, Any] | None:
    """The fingerprint ``file`` carries (.json, .npz or history.jsonl's first line), or None: none, or a
    file too damaged to say (its reader then reports the damage)."""
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                entry = archive[fingerprints.KEY] if fingerprints.KEY in archive.files else None
            return fingerprints.from_array(entry)
        if file.name == "history.jsonl":
            with file.open("rb") as stream:
                run_id = json.loads(stream.readline()).get(fingerprints.LINE_KEY)
            return None if run_id is None else {"id": run_id}
        value = json.loads(file.read_bytes()).get(fingerprints.KEY)
        return value if isinstance(value, dict) and "id" in value else None
    except Exception:  # any damage: the file's own reader names it
        return None


def foreign_remedy(file: Path) -> str:
    return (f"put this run's own {file.name} back (a file copied from another run is never used), "
            f"or start the run again with overwrite=True")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint.

    Attributes:
      state_leaves: the search state's leaves, in ``jax.tree.leaves`` order.
      cache_state: ``MaskCache.state_dict()``.
      trained_masks, elapsed, generation: the counters after ``generation``.
      file: the file read.
      fallback: why the newest checkpoint was not used (None: it was).
      damaged: the damaged newest checkpoint to keep aside (``set_aside``) once the run goes on.
    """

    state_leaves: list[np.ndarray]
    cache_state: dict[str, np.ndarray]
    trained_masks: int
    elapsed: float
    generation: int
    file: Path
    fallback: str | None = None
    damaged: Path | None = None


def read_checkpoint(path: Path, state_template: list[Any], num_features: int,
                    fingerprint: dict[str, Any] | None = None) -> Checkpoint:
    """The newest readable checkpoint: checkpoint.npz, else checkpoint.previous.npz. Writes nothing.

    ``state_template`` is the search state's leaves of this run (their shapes
    and dtypes are checked); ``fingerprint`` the run's (config.json's). A
    checkpoint of another run is refused (``ForeignFileError``), never passed
    over. A damaged newest checkpoint falls back on the previous one (``fallback``
    says so; ``set_aside`` then keeps the damaged file as checkpoint.damaged.npz);
    a damaged previous one beside a whole newest one is a ``RuntimeWarning``.
    """
    remedy = restart_remedy(path)
    problems, found = {}, {}
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        file = path / name
        if not file.is_file():
            problems[name] = "missing"
            continue
        try:
            found[name] = _parse_checkpoint(file, state_template, num_features, remedy, fingerprint)
        except ForeignFileError:
            raise
        except RunFileError as error:
            problems[name] = error.problem
    if CHECKPOINT in found:
        if problems.get(PREVIOUS_CHECKPOINT, "missing") != "missing":
            warnings.warn(f"{path / PREVIOUS_CHECKPOINT}: {problems[PREVIOUS_CHECKPOINT]}; the newest "
                          f"checkpoint is whole and used, and the next generation replaces the damaged one",
                          RuntimeWarning, stacklevel=2)
        return found[CHECKPOINT]
    if PREVIOUS_CHECKPOINT in found:
        checkpoint = found[PREVIOUS_CHECKPOINT]
        newest = path / CHECKPOINT
        note = f"{newest}: {problems[CHECKPOINT]}"
        if newest.is_file():
            note += " (kept as checkpoint.damaged.npz)"
        note += f"; resuming from {PREVIOUS_CHECKPOINT} (generation {checkpoint.generation})"
        return dataclasses.replace(checkpoint, fallback=note, damaged=newest if newest.is_file() else None)
    raise RunFileError(path / CHECKPOINT, f"{problems[CHECKPOINT]}, and {PREVIOUS_CHECKPOINT} is "
                                          f"{problems[PREVIOUS_CHECKPOINT]}", remedy)


def set_aside(checkpoint: Checkpoint) -> None:
    """Keeps the damaged newest checkpoint a fallback passed over as checkpoint.damaged[-N].npz."""
    if checkpoint.damaged is not None and checkpoint.damaged.is_file():
        os.replace(checkpoint.damaged, _unused_name(checkpoint.damaged.parent, "checkpoint.damaged", ".npz"))


def _unused_name(path: Path, stem: str, suffix: str) -> Path:
    candidate, number = path / f"{stem}{suffix}", 1
    while candidate.exists():
        candidate, number = path / f"{stem}-{number}{suffix}", number + 1
    return candidate


def _parse_checkpoint(file: Path, state_template: list[Any], num_features: int, remedy: str,
                      fingerprint: dict[str, Any] | None) -> Checkpoint:
    arrays = read_npz_file(file, remedy)
    check_fingerprint(file, read_npz_fingerprint(file, arrays, remedy), fingerprint)
    counters = ("cache_keys", "cache_values", "trained_masks", "elapsed_seconds", "generation")
    names = [f"state_{i}" for i in range(len(state_template))]
    missing = [name for name in (*names, *counters) if name not in arrays]
    if missing:
        raise RunFileError(file, f"lacks {', '.join(missing[:4])} (written by another version?)", remedy)
    if f"state_{len(state_template)}" in arrays:
        raise RunFileError(file, "holds a search state of another structure (another strategy?)", remedy)
    for name, template in zip(names, state_template, strict=True):
        found, expected = arrays[name], np.asarray(template)
        if found.shape != expected.shape or found.dtype != expected.dtype:
            raise RunFileError(file, f"{name} is {found.dtype} {found.shape}, expected {expected.dtype} "
                                     f"{expected.shape} (another search setting?)", remedy)
    keys, values = arrays["cache_keys"], arrays["cache_values"]
    if values.ndim == 2 and values.shape[1] == len(METRIC_NAMES) - 1:  # before "diverged" was kept
        train_loss = values[:, METRIC_NAMES.index("train_loss")]
        values = np.concatenate([values, ~np.isfinite(train_loss[:, None])], axis=1)
    problem = (shape_problem("cache_keys", keys, (None, (num_features + 7) // 8), "u")
               or shape_problem("cache_values", values, (len(keys), len(METRIC_NAMES)), "f"))
    for name in ("trained_masks", "generation", "elapsed_seconds"):
        problem = problem or shape_problem(name, arrays[name], (), "iuf")
    if problem:
        raise RunFileError(file, problem, remedy)
    generation, elapsed = int(arrays["generation"]), float(arrays["elapsed_seconds"])
    if generation < 0 or not math.isfinite(elapsed):
        raise RunFileError(file, f"generation {generation}, elapsed {elapsed}: not a run's counters", remedy)
    return Checkpoint(
        state_leaves=[arrays[name] for name in names],
        cache_state={"cache_keys": keys, "cache_values": values},
        trained_masks=int(arrays["trained_masks"]), elapsed=elapsed, generation=generation, file=file,
    )
