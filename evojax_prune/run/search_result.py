"""A finished search's result, and its files: ``SearchResult`` with load, save, tables, heads and export.

The result lives next to the run format (``rundir``) so that it can read and
write itself: ``SearchResult.load(run_dir)`` reads a finished run directory
back, validated file by file; ``result.save(run_dir)`` writes one made in
memory; ``to_pandas``, ``head``, ``predict`` and ``export`` take a front member
out of the tool (``head.compact``, ``keras_export``). The vocabulary the result
is written in (metric names, objectives, reference point) is ``result.py``'s.

Files written here (the rest of the format: ``rundir``):
  pareto.csv    the final front, one row per member (validation and test metrics;
                ``ood_score``: the OoD score the AUROC columns are of)
  pareto.npz    the front's masks and trained head parameters (full width; ``note`` says that the
                pruned units' rows are not weights), and the baseline's
  summary.json  baseline, front, hypervolume, wall time, ``stopping``
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_prune import head as head_module
from evojax_prune.config import RunConfig
from evojax_prune.head import HeadParams
from evojax_prune.io import atomic
from evojax_prune.result import MEMBERS, METRIC_NAMES, REFERENCE_POINT, objectives, robustness
from evojax_prune.run import fingerprint as fingerprints
from evojax_prune.run import keras_export, rundir
from evojax_prune.run.rundir import (
    CSV_COLUMNS,
    CSV_METRICS,
    FORMAT,
    OLDER_CSV_COLUMNS,
    PARAM_NAMES,
    SECOND_KERNEL,
    RunDirectoryError,
    RunFileError,
    read_config,
    read_history,
    read_json_file,
    read_npz_file,
    require_keys,
    results_remedy,
    shape_problem,
)
from evojax_prune.score import ood_scores

# Said in pareto.npz itself: the kernels are stored as trained, full width.
PARAMS_NOTE = (
    "hidden_kernel (and second_kernel, output_kernel) are stored full width as trained: the rows and columns "
    "of units a mask prunes (masks == False) are NOT weights of the head and must not be used; apply a head "
    "as evojax_prune.head.apply(params, mask, x), or take SearchResult.head(member), which keeps only the "
    "kept units"
)
# config.json's record of what was searched, kept on the result (``SearchResult.provenance``).
PROVENANCE_KEYS = ("features", "num_features", "num_classes", "strategy", fingerprints.KEY)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What a finished search found.

    Attributes:
      masks: (K, D) bool, the final Pareto front (distinct masks), sorted by
        validation accuracy, best first.
      validation, test: metric name -> (K,) float64, the front scored on the
        validation split / OoD validation data and on the test split / OoD test
        data (``METRIC_NAMES``; ``diverged`` is 1.0 for a head
        whose training diverged, ``TrainedPopulation.diverged``).
      params: the front's trained heads, HeadParams of numpy arrays with a leading K axis.
      baseline_validation, baseline_test: metric name -> float, the all-ones mask.
      baseline_params: the all-ones head, HeadParams of numpy arrays.
      history: one dict per generation (generation 0 is the initial population).
      hypervolume: of the final front's validation objectives, reference (1, 1, 1).
      evaluations: masks evaluated (duplicates counted once).
      wall_time: seconds.
      config, seed: what produced it.
      folds: cross-validation folds its metrics are means over (``folds.py``);
        1 for one FeatureSet. With more, ``params`` are the first fold's heads.
      stopping: why the search stopped (``search.stopping.summary``: reason
        ``"generations"``, ``"time_budget"`` or ``"hv_patience"``, the
        generation it stopped after, the controls); None when unknown.
      provenance: config.json's record of what was searched (``features``: the
        FeatureSet's metadata, ``num_features``, ``num_classes``, ``strategy``,
        ``fingerprint``: what the run's files belong to, ``run/fingerprint.py``);
        None for a result built by hand. ``save`` writes it back.

    Load one from a run directory with ``SearchResult.load(run_dir)``; write
    one made with ``out_dir=None`` with ``result.save(run_dir)``.
    """

    masks: np.ndarray
    validation: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    params: Any
    baseline_validation: dict[str, float]
    baseline_test: dict[str, float]
    baseline_params: Any
    history: list[dict[str, Any]]
    hypervolume: float
    evaluations: int
    wall_time: float
    config: RunConfig
    seed: int
    stopping: dict[str, Any] | None = None
    folds: int = 1
    provenance: dict[str, Any] | None = None

    @property
    def objectives(self) -> np.ndarray:
        """(K, 3) validation objectives as minimised: error, MEM, 1 - AUROC."""
        return objectives(self.validation, self.config.ood.auroc)

    def member_index(self, member: int | str) -> int:
        """The position in ``masks`` of a front member.

        Args:
          member: a position (negative counts from the end), or what the member
            is best at on the validation split: ``"accuracy"`` (ties: the fewest
            features), ``"mem"`` (the fewest features; ties: the best accuracy)
            or ``"auroc"`` (the robustness objective's AUROC; ties: the best
            accuracy).
        """
        count = len(self.masks)
        if isinstance(member, (int, np.integer)) and not isinstance(member, bool):
            if not -count <= member < count:
                raise ValueError(f"member = {member}: the front has {count} members")
            return int(member) % count
        accuracy = self.validation["accuracy"]
        size = self.masks.sum(axis=1)
        if member == "accuracy":
            keys = (size, -accuracy)  # np.lexsort: the last key first
        elif member == "mem":
            keys = (-accuracy, size)
        elif member == "auroc":
            keys = (-accuracy, -robustness(self.validation, self.config.ood.auroc))
        else:
            raise ValueError(f"member must be one of {MEMBERS} or a front position, got {member!r}")
        return int(np.lexsort(keys)[0])

    # ------------------------------------------------------------------ files

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> SearchResult:
        """The finished run in ``run_dir``, every file validated (``read_run``).

        Raises:
          FileNotFoundError: no such directory.
          rundir.RunDirectoryError: not a run directory, or an unfinished run.
          rundir.RunFileError: a file is damaged (which, what, and what to do).
        """
        return read_run(run_dir)[0]

    def save(self, run_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Writes this result as a finished run directory that ``load``, ``report`` and ``explain`` read.

        For a search run with ``out_dir=None``. ``run_dir`` must not exist, be
        empty, or (with ``overwrite=True``) hold an earlier run; nothing is
        written until that is checked. There is no checkpoint: the run cannot
        be resumed, only read.
        """
        path = rundir.prepare(run_dir, resume=False, overwrite=overwrite)
        provenance = self.provenance or {}
        rundir.write_config(path, {
            "config": self.config.to_dict(), "seed": self.seed,
            "features": provenance.get("features"),
            "num_features": int(provenance.get("num_features", self.params.hidden_kernel.shape[1])),
            "num_classes": int(provenance.get("num_classes", self.params.output_bias.shape[-1])),
            "strategy": provenance.get("strategy", "unknown"),
            fingerprints.KEY: provenance.get(fingerprints.KEY),
            "saved_by": "SearchResult.save",
        })
        rundir.write_history(path, self.history, provenance.get(fingerprints.KEY))
        write_results(path, self, provenance.get(fingerprints.KEY))
        return path

    def to_pandas(self, split: str = "validation"):
        """The front as a ``pandas.DataFrame``, one row per member (best validation accuracy first).

        Columns: ``member``, ``active`` (the kept features, or neurons:
        ``HeadConfig.prune``), ``mem``, every metric of ``split``
        ("validation" or "test": accuracy, auroc, auroc_paper, fpr95, aupr_in,
        aupr_out, epochs, train_loss, diverged) and ``ood_score`` (the score
        the AUROC columns are of). Needs pandas (``pip install 'evojax-prune[tables]'``).
        """
        if split not in ("validation", "test"):
            raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
        try:
            import pandas
        except ImportError:
            raise ImportError("SearchResult.to_pandas needs pandas: pip install 'evojax-prune[tables]' "
                              "(or pip install pandas)") from None
        metrics = getattr(self, split)
        columns = {"member": np.arange(len(self.masks)), "active": self.masks.sum(axis=1),
                   "mem": np.asarray(self.validation["mem"])}
        columns |= {name: np.asarray(value) for name, value in metrics.items() if name != "mem"}
        columns["ood_score"] = [self.config.ood.score] * len(self.masks)
        return pandas.DataFrame(columns)

    # ------------------------------------------------------------------ heads

    def head(self, member: int | str = "accuracy") -> head_module.CompactHead:
        """A front member's head holding only its kept units (``head.compact``; ``member_index``)."""
        index = self.member_index(member)
        one = jax.tree.map(lambda leaf: np.asarray(leaf)[index], self.params)
        return head_module.compact(one, self.masks[index], self.config.head.prune)

    def predict(self, x, member: int | str = "accuracy") -> np.ndarray:
        """(N, D) features -> (N,) int classes (positions in the FeatureSet's class names)."""
        compact = self.head(member)
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != compact.num_features:
            raise ValueError(f"predict: x must be (N, D = {compact.num_features}) features, "
                             f"found shape {x.shape}")
        return np.asarray(jnp.argmax(compact.logits(x), axis=-1))

    def export(self, member: int | str, path: str | os.PathLike, *, inputs: str = "features",
               with_backbone: bool = False, backbone_weights: str | os.PathLike | None = None,
               overwrite: bool = False) -> Path:
        """Writes a front member's head as a Keras model file (``.keras``), loadable without evojax-prune.

        ``inputs="features"``: the model takes the D features and picks the
        kept ones with a fixed, non-trainable one-hot layer; ``"kept"``: it
        takes the k kept features (in the order of ``feature_indices``, which
        the file records). Either way its trained weights hold only the kept
        units. See ``keras_export.export_head``.

        ``with_backbone=True``: one model from images to classes, the run's
        ResNet-50 (its weights, preprocessing and pooling, as ``extract``
        recorded them) in front of the head; it takes (N, S, S, 3) RGB images
        in 0..255 resized as ``extract`` did (the file records S and the resize).
        ``backbone_weights``: the recorded weights file where it is on this
        machine (checked to be the same file). A run on features not made by
        ``extract`` (the embedded digits, ``FeatureSelector`` arrays) is refused.
        """
        if with_backbone and inputs != "features":
            raise ValueError(f"with_backbone=True: the model takes images, not inputs={inputs!r}")
        index = self.member_index(member)
        record = {"member": index, "seed": self.seed, "ood_score": self.config.ood.score,
                  "validation": {name: float(value[index]) for name, value in self.validation.items()},
                  "test": {name: float(value[index]) for name, value in self.test.items()},
                  "features": (self.provenance or {}).get("features")}
        return keras_export.export_head(
            self.head(index), path, inputs=keras_export.IMAGES if with_backbone else inputs,
            overwrite=overwrite, record=record, features_metadata=record["features"],
            weights=backbone_weights)

    def __repr__(self) -> str:
        return (
            f"SearchResult(front of {len(self.masks)}, best test accuracy "
            f"{self.test['accuracy'].max():.3f} vs baseline {self.baseline_test['accuracy']:.3f}, "
            f"smallest MEM {self.validation['mem'].min():.3f}, hypervolume {self.hypervolume:.4f}, "
            f"{self.evaluations} evaluations in {self.wall_time:.1f} s)"
        )



def _member_argument(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def register(parser) -> None:
    """The ``evojax-prune export`` command's arguments (cli/main.py)."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    parser.add_argument("--member", type=_member_argument, default="accuracy", metavar="K|NAME",
                        help="the front member: its position in pareto.csv, or accuracy / mem / auroc "
                             "(the best at it on validation; default accuracy)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the model file to write (.keras)")
    parser.add_argument("--inputs", choices=keras_export.INPUTS, default="features",
                        help="what the model takes: all D features (default) or the kept ones only")
    parser.add_argument("--with-backbone", action="store_true",
                        help="put the run's ResNet-50 (weights, preprocessing, pooling, as extract recorded "
                             "them) in front: one model from images to classes")
    parser.add_argument("--backbone-weights", metavar="PATH",
                        help="with --with-backbone: the weights file extract used, where it is on this "
                             "machine (default: the recorded one)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    parser.set_defaults(handler=_export_command)


def _export_command(args) -> int:
    result = SearchResult.load(args.run_dir)
    index = result.member_index(args.member)
    if args.backbone_weights is not None and not args.with_backbone:
        raise ValueError("--backbone-weights needs --with-backbone")
    if args.with_backbone and args.inputs != "features":
        raise ValueError(f"--with-backbone: the model takes images, not --inputs {args.inputs}")
    path = result.export(index, args.out, inputs=args.inputs, with_backbone=args.with_backbone,
                         backbone_weights=args.backbone_weights, overwrite=args.overwrite)
    kept = int(result.masks[index].sum())
    images = keras_export.read_record(path).get("images")  # what the file says it takes
    takes = f"(N, {', '.join(map(str, images['shape']))}) RGB images" if images else f"{args.inputs} inputs"
    print(f"wrote {path}: member {index} ({kept} of {result.masks.shape[1]} "
          f"{head_module.UNIT_NAMES[result.config.head.prune]} kept, validation accuracy "
          f"{result.validation['accuracy'][index]:.4f}; takes {takes}); load it with keras.saving.load_model")
    if images and images["backbone"].get("random_weights"):
        print("warning: the backbone has random weights (extract --weights none): for tests only",
              file=sys.stderr)
    return 0


def write_results(path: Path, result: SearchResult, fingerprint: dict[str, Any] | None = None) -> None:
    """pareto.csv, pareto.npz and summary.json of a ``SearchResult``, written as one change
    (``atomic.write_all_atomically``: a full disk leaves all three as they were).

    ``fingerprint``: the run's (``run/fingerprint.py``), stored in pareto.npz and summary.json.
    """
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    diverged = result.validation.get("diverged", np.zeros(len(result.masks)))
    for member, mask in enumerate(result.masks):
        row = [member, int(mask.sum()), float(result.validation["mem"][member])]
        for name in CSV_METRICS:
            row += [float(result.validation[name][member]), float(result.test[name][member])]
        row += [int(result.validation["epochs"][member]), result.config.ood.score, int(diverged[member])]
        writer.writerow([f"{value:.6f}" if isinstance(value, float) else value for value in row])

    arrays = {"format": np.asarray(FORMAT), "masks": result.masks, "objectives": result.objectives,
              "baseline_mask": np.ones(result.masks.shape[1], bool), "note": np.asarray(PARAMS_NOTE)}
    if fingerprint is not None:
        arrays[fingerprints.KEY] = fingerprints.as_array(fingerprint)
    for prefix, params in (("", result.params), ("baseline_", result.baseline_params)):
        for name in PARAM_NAMES + (SECOND_KERNEL,) * (params.second_kernel is not None):
            arrays[prefix + name] = np.asarray(getattr(params, name))

    as_lists = lambda values: {name: np.asarray(value).tolist() for name, value in values.items()}
    summary = {
        "format": FORMAT,
        "seed": result.seed,
        "preset": result.config.preset,
        "generations": len(result.history) - 1,
        "evaluations": result.evaluations,
        "wall_seconds": result.wall_time,
        "hypervolume": result.hypervolume,
        "hypervolume_reference": list(REFERENCE_POINT),
        "auroc_objective": result.config.ood.auroc,
        "ood_score": result.config.ood.score,
        "ood_score_description": ood_scores.describe(result.config.ood),
        "fpr95_convention": "in-distribution as positive (ODIN paper)",
        "baseline": {"validation": result.baseline_validation, "test": result.baseline_test,
                     "active_features": int(result.masks.shape[1])},
        "front": {"size": len(result.masks), "active_features": result.masks.sum(axis=1).tolist(),
                  "validation": as_lists(result.validation), "test": as_lists(result.test)},
        # why the search stopped (search.stopping.summary); None for a result built without a loop
        "stopping": result.stopping,
    }
    if fingerprint is not None:
        summary[fingerprints.KEY] = fingerprint
    atomic.write_all_atomically({
        path / "pareto.csv": atomic.text_writer(table.getvalue()),
        path / "pareto.npz": lambda stream: np.savez_compressed(stream, **arrays),
        path / "summary.json": atomic.json_writer(summary),
    })


# --------------------------------------------------------------------------- reading


def read_run(path: str | os.PathLike) -> tuple[SearchResult, dict[str, Any]]:
    """A finished run directory as a ``SearchResult`` and config.json's dict, every file validated.

    Raises:
      FileNotFoundError: no such directory.
      RunDirectoryError: not a run directory, or an unfinished run.
      RunFileError: a file is damaged (which, what, and what to do).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunDirectoryError(f"{path}: not a directory (expected a run directory)")
    if not (path / "config.json").is_file():
        raise RunDirectoryError(f"{path}: not a run directory (no config.json), nor a group of runs "
                                "(no runs.json)")
    recorded = read_config(path)
    for name in rundir.RESULT_FILES:
        if not (path / name).is_file():
            raise RunDirectoryError(f"{path}: the run has not finished (no {name}); continue it with "
                                    f"resume_search('{path}')")
    remedy = results_remedy(path)
    fingerprint = recorded.get(fingerprints.KEY)
    rundir.check_same_run({path / "config.json": fingerprint,
                           **{path / name: rundir.peek_fingerprint(path / name)
                              for name in ("pareto.npz", "summary.json", "history.jsonl")}})
    # A damaged line past the first costs the history figure its tail, not the run's results.
    history = read_history(path, fingerprint, needed=1)
    config = RunConfig.from_dict(recorded["config"])
    arrays = read_npz_file(path / "pareto.npz", remedy)
    front_file = path / "pareto.npz"
    rundir.check_fingerprint(front_file, rundir.read_npz_fingerprint(front_file, arrays, remedy), fingerprint)
    masks, params, baseline_params = _front_arrays(path / "pareto.npz", arrays, recorded["num_features"],
                                                   config.head, recorded["num_classes"], remedy)
    summary = read_json_file(path / "summary.json", remedy)
    rundir.check_fingerprint(path / "summary.json", summary.get(fingerprints.KEY), fingerprint)
    validation, test, baseline = _summary_metrics(path / "summary.json", summary, len(masks), remedy)
    _check_csv(path / "pareto.csv", masks, config.ood.score, remedy)
    result = SearchResult(
        masks=masks, validation=validation, test=test, params=params,
        baseline_validation=baseline["validation"], baseline_test=baseline["test"],
        baseline_params=baseline_params, history=history,
        hypervolume=float(summary["hypervolume"]), evaluations=int(summary["evaluations"]),
        wall_time=float(summary["wall_seconds"]), config=config, seed=int(recorded["seed"]),
        stopping=summary.get("stopping"),
        folds=len((recorded.get("features") or {}).get("folds") or [None]),
        provenance={name: recorded.get(name) for name in PROVENANCE_KEYS},
    )
    return result, recorded


def _front_arrays(file: Path, arrays: dict[str, np.ndarray], num_features: int, head_config,
                  num_classes: int, remedy: str):
    hidden, two_layers = head_config.hidden, head_config.hidden_layers == 2
    param_names = PARAM_NAMES + (SECOND_KERNEL,) * two_layers
    names = ("masks", *param_names, *(f"baseline_{name}" for name in param_names))
    missing = [name for name in names if name not in arrays]
    if missing:
        raise RunFileError(file, f"lacks {', '.join(missing)} (written by another version?)", remedy)
    size = len(arrays["masks"]) if arrays["masks"].ndim == 2 else None
    shapes = {"masks": ((size, head_config.chromosome_length(num_features)), "b"),
              "hidden_kernel": ((size, num_features, hidden), "f"),
              "output_kernel": ((size, hidden, num_classes), "f"),
              "output_bias": ((size, num_classes), "f"),
              "baseline_hidden_kernel": ((num_features, hidden), "f"),
              "baseline_output_kernel": ((hidden, num_classes), "f"),
              "baseline_output_bias": ((num_classes,), "f")}
    if two_layers:
        shapes |= {SECOND_KERNEL: ((size, hidden, hidden), "f"),
                   f"baseline_{SECOND_KERNEL}": ((hidden, hidden), "f")}
    for name, (shape, kind) in shapes.items():  # size None (masks not 2-D): the masks' problem first
        problem = shape_problem(name, arrays[name], shape, kind)
        if problem:
            raise RunFileError(file, problem, remedy)
    params = HeadParams(*(arrays[name] for name in param_names))
    baseline = HeadParams(*(arrays[f"baseline_{name}"] for name in param_names))
    return arrays["masks"], params, baseline


def _summary_metrics(file: Path, summary: dict[str, Any], size: int, remedy: str):
    require_keys(file, summary, ("hypervolume", "evaluations", "wall_seconds", "baseline", "front"), remedy)
    try:
        front, baseline = summary["front"], summary["baseline"]
        splits = {split: {name: np.asarray(value, np.float64) for name, value in front[split].items()}
                  for split in ("validation", "test")}
        baseline = {split: {name: float(value) for name, value in baseline[split].items()}
                    for split in ("validation", "test")}
        float(summary["hypervolume"]), int(summary["evaluations"]), float(summary["wall_seconds"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RunFileError(file, f"its front or baseline is malformed ({type(error).__name__}: {error})",
                           remedy) from None
    for split, values in splits.items():
        missing = [name for name in METRIC_NAMES if name != "diverged" and name not in values]
        wrong = [name for name, value in values.items() if value.shape != (size,)]
        if missing or wrong:
            raise RunFileError(file, f"front.{split} lacks {missing} or has metrics {wrong} not of the "
                                     f"front's {size} members in pareto.npz", remedy)
    return splits["validation"], splits["test"], baseline


def _check_csv(file: Path, masks: np.ndarray, ood_score: str, remedy: str) -> None:
    try:
        rows = list(csv.reader(io.StringIO(file.read_bytes().decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as error:  # not _read_text: "not a CSV table" says more
        raise RunFileError(file, f"not a CSV table ({error})", remedy) from None
    if not rows:
        raise RunFileError(file, "empty", remedy)
    header = tuple(rows[0])
    if header not in (CSV_COLUMNS, *OLDER_CSV_COLUMNS):
        raise RunFileError(file, f"columns {list(header)[:4]}... are not a front's "
                                 f"(expected {list(CSV_COLUMNS)[:4]}...)", remedy)
    body = rows[1:]
    if len(body) != len(masks) or any(len(row) != len(header) for row in body):
        raise RunFileError(file, f"{len(body)} rows of a front, expected {len(masks)} complete rows "
                                 "(as pareto.npz)", remedy)
    try:
        active = [int(row[1]) for row in body]
    except ValueError as error:
        raise RunFileError(file, f"active_features is not a count ({error})", remedy) from None
    if active != masks.sum(axis=1).tolist():
        raise RunFileError(file, "its active_features disagree with pareto.npz's masks", remedy)
    column = header.index("ood_score") if "ood_score" in header else None
    recorded_scores = set() if column is None else {row[column] for row in body}
    if recorded_scores - {ood_score}:
        raise RunFileError(file, f"its ood_score column says {sorted(recorded_scores)}, config.json's "
                                 f"ood.score is {ood_score!r}", remedy)
