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

import csv
import dataclasses
import io
import json
import math
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune.config import RunConfig
from evojax_prune.io import atomic
from evojax_prune.result import METRIC_NAMES, REFERENCE_POINT
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


def restart_remedy(path: Path) -> str:
    return f"it cannot be rebuilt: start the run again ('evojax-prune run --overwrite --out {path}' ...)"


def results_remedy(path: Path) -> str:
    return (f"write the results again from the checkpoint with the run's command and "
            f"'--resume --out {path}'")


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
        raise RunDirectoryError("--resume and --overwrite exclude each other")
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
                f"{path}: directory exists and is not empty; pass --resume to continue the run in it "
                "or --overwrite to replace it"
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
                                "run without --resume")
    results = [name for name in ("pareto.csv", "pareto.npz", "summary.json") if (path / name).exists()]
    history = path / "history.jsonl"
    lines = len(history.read_bytes().splitlines()) if history.is_file() else 0
    if results or lines > 1:
        found = ", ".join(results + ([f"history.jsonl of {lines} generations"] if lines > 1 else []))
        raise RunDirectoryError(f"{path}: nothing to resume (no {CHECKPOINT} although it holds {found}); "
                                f"start the run again with --overwrite (it deletes the run's files)")
    return "start"


GROUP_FILES = ("runs.json", "merged_pareto.csv")  # beside run-0 .. run-{R-1} (``run_searches(runs=R)``)


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
    others = [name for name in existing if name not in names and name not in GROUP_FILES
              and not name.startswith(".")]
    replace = False
    if resume:
        if others:
            raise RunDirectoryError(f"{path}: cannot resume {runs} runs, it also holds {others[:5]} "
                                    "(started with another --runs?)")
    elif existing:
        if not overwrite:
            raise RunDirectoryError(f"{path}: directory exists and is not empty; pass --resume to continue "
                                    "the runs in it or --overwrite to replace them")
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
        for name in GROUP_FILES:
            (path / name).unlink(missing_ok=True)
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
    atomic.write_text(path / "merged_pareto.csv", table.getvalue())
    atomic.write_json(path / "runs.json", {
        "format": FORMAT,
        "runs": [{"directory": f"run-{index}", "seed": result.seed, "hypervolume": result.hypervolume,
                  "front_size": len(result.masks), "stopping": result.stopping}
                 for index, result in enumerate(merged.runs)],
        "merged": {"size": len(merged.merged_run), "hypervolume": merged.hypervolume,
                   "hypervolume_reference": list(REFERENCE_POINT),
                   "run": merged.merged_run.tolist(), "member": merged.merged_member.tolist()},
        "run_hypervolumes": merged.spread(),
    })


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


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    atomic.write_text(path / "history.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def write_checkpoint(path: Path, state_leaves: list[np.ndarray], cache_state: dict[str, np.ndarray], *,
                     trained_masks: int, elapsed: float, generation: int) -> None:
    """checkpoint.npz; the one it replaces becomes checkpoint.previous.npz.

    The new file is complete on disk before either rename, so a kill or a full
    disk at any moment leaves at least one complete checkpoint of the last two
    generations.
    """
    arrays = {f"state_{i}": np.asarray(leaf) for i, leaf in enumerate(state_leaves)}
    arrays.update(cache_state)
    arrays.update(format=np.asarray(FORMAT), trained_masks=np.asarray(trained_masks),
                  elapsed_seconds=np.asarray(elapsed), generation=np.asarray(generation))
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


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.jsonl, validated: one object per generation, in order from generation 0."""
    file = path / "history.jsonl"
    remedy = restart_remedy(path)
    text = _read_text(file, remedy)
    history = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RunFileError(file, f"line {number} is not valid JSON ({error.msg}: truncated or "
                                     "overwritten?)", remedy) from None
        if not isinstance(record, dict):
            raise RunFileError(file, f"line {number} is not a JSON object", remedy)
        missing = [key for key in HISTORY_KEYS if key not in record]
        if missing:
            raise RunFileError(file, f"line {number} lacks {', '.join(missing)} (written by another "
                                     "version?)", remedy)
        if record["generation"] != number - 1:
            raise RunFileError(file, f"line {number} is generation {record['generation']!r}, expected "
                                     f"{number - 1}", remedy)
        history.append(record)
    if not history:
        raise RunFileError(file, "empty", remedy)
    return history


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint.

    Attributes:
      state_leaves: the search state's leaves, in ``jax.tree.leaves`` order.
      cache_state: ``MaskCache.state_dict()``.
      trained_masks, elapsed, generation: the counters after ``generation``.
      file: the file read.
      fallback: why the newest checkpoint was not used (None: it was).
    """

    state_leaves: list[np.ndarray]
    cache_state: dict[str, np.ndarray]
    trained_masks: int
    elapsed: float
    generation: int
    file: Path
    fallback: str | None = None


def read_checkpoint(path: Path, state_template: list[Any], num_features: int) -> Checkpoint:
    """The newest readable checkpoint: checkpoint.npz, else checkpoint.previous.npz.

    ``state_template`` is the search state's leaves of this run (their shapes
    and dtypes are checked). A damaged newest checkpoint is moved aside to
    ``checkpoint.damaged.npz`` (kept, never deleted) when the previous one is
    used instead.
    """
    remedy = restart_remedy(path)
    problems = {}
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        file = path / name
        if not file.is_file():
            problems[name] = "missing"
            continue
        try:
            checkpoint = _parse_checkpoint(file, state_template, num_features, remedy)
        except RunFileError as error:
            problems[name] = error.problem
            continue
        if name == CHECKPOINT:
            return checkpoint
        newest = path / CHECKPOINT
        note = f"{newest}: {problems[CHECKPOINT]}"
        if newest.is_file():
            kept = _unused_name(path, "checkpoint.damaged", ".npz")
            os.replace(newest, kept)
            note += f" (kept as {kept.name})"
        note += f"; resuming from {name} (generation {checkpoint.generation})"
        return dataclasses.replace(checkpoint, fallback=note)
    raise RunFileError(path / CHECKPOINT, f"{problems[CHECKPOINT]}, and {PREVIOUS_CHECKPOINT} is "
                                          f"{problems[PREVIOUS_CHECKPOINT]}", remedy)


def _unused_name(path: Path, stem: str, suffix: str) -> Path:
    candidate, number = path / f"{stem}{suffix}", 1
    while candidate.exists():
        candidate, number = path / f"{stem}-{number}{suffix}", number + 1
    return candidate


def _parse_checkpoint(file: Path, state_template: list[Any], num_features: int, remedy: str) -> Checkpoint:
    arrays = read_npz_file(file, remedy)
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
