"""Plots and a Markdown report for a finished run: ``evojax-prune report RUN_DIR``.

Reads the run directory that ``run_search`` wrote (config.json, history.jsonl,
pareto.npz, summary.json), rebuilds the front's ensembles on the test data
(``ensemble.compare_ensembles``) and writes, beside the run's files:

  figures/front_3d.png       the front in (MEM, AUROC, accuracy), baseline marked
  figures/front_pairs.png    its three pairwise projections
  figures/history.png        hypervolume and best objectives per generation
  figures/ensembles.png      each band's ensembles vs its best member
  figures/features.png       how often each feature is kept across the front
  ensembles.json             the ensemble numbers
  report.md                  all of it with the key numbers, written last

and with ``--compare-published NAME`` (``published.py``), the run's front beside
the authors' published one:

  figures/published.png      both fronts, accuracy against MEM and against AUROC
  published.json             both fronts and their hypervolumes

Every file is written atomically (``atomic.write_atomically``), so a report
interrupted halfway leaves the previous files or complete new ones; report.md
goes last, so its presence means the figures it shows are there.

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas, never
through pyplot: no global state, no display needed, and a notebook can show
the same objects.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune import head
from evojax_prune.analysis import ensemble, published, voting
from evojax_prune.data import run_features
from evojax_prune.io import atomic
from evojax_prune.result import objectives, robustness
from evojax_prune.run import rundir, search_result
from evojax_prune.score import ood_scores

FIGURES = ("front_3d", "front_pairs", "history", "ensembles", "features")
PUBLISHED_FIGURE = "published"  # written only with ``compare_published``
# The authors' bands, then the upper half and the whole front: a small front
# (a single run's) puts one or two members in each of the authors' bands.
REPORT_BANDS = (*voting.AUTHORS_BANDS, (50, 100), voting.WHOLE_FRONT)
# The Grad-CAM section ``explain`` adds to report.md lies between these.
EXPLAIN_START = "<!-- evojax-prune explain: start -->"
EXPLAIN_END = "<!-- evojax-prune explain: end -->"


# --------------------------------------------------------------------------- reading a run


# --------------------------------------------------------------------------- figures


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def score_label(result) -> str:
    """The OoD score the run's AUROC is of, e.g. "ODIN" (runs from before the choice: ODIN)."""
    return ood_scores.LABELS[result.config.ood.score]


def unit_name(result) -> str:
    """What the run's mask bits are: "features", or which neurons (``head.UNIT_NAMES``)."""
    return head.UNIT_NAMES[result.config.head.prune]


def _mem_label(result) -> str:
    return f"MEM (fraction of {unit_name(result)} kept)"


def best_on_test(result) -> dict[str, tuple[int, float]]:
    """Each metric's own best front member on test: metric -> (member, value), for accuracy and the
    run's AUROC. Two different members in general: a line that names one member for both is wrong."""
    accuracy, auroc = result.test["accuracy"], result.test["auroc"]
    best_accuracy, best_auroc = int(np.argmax(accuracy)), int(np.argmax(auroc))
    return {"accuracy": (best_accuracy, float(accuracy[best_accuracy])),
            "auroc": (best_auroc, float(auroc[best_auroc]))}


def _front_points(result) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Validation (accuracy, MEM, AUROC) of the front and of the baseline."""
    kind = result.config.ood.auroc
    accuracy, mem = result.validation["accuracy"], result.validation["mem"]
    auroc = robustness(result.validation, kind)
    base = result.baseline_validation
    baseline = (base["accuracy"], 1.0, float(robustness(base, kind)))
    return accuracy, mem, auroc, baseline


def plot_front_3d(result):
    """The front in 3D: MEM and AUROC on the floor, accuracy up (and as colour); baseline a red star."""
    accuracy, mem, auroc, baseline = _front_points(result)
    figure = new_figure(6.5, 5.5)
    axes = figure.add_subplot(projection="3d")
    points = axes.scatter(mem, auroc, accuracy, c=accuracy, cmap="viridis", s=40, depthshade=False,
                          edgecolors="k", linewidths=0.4, label="front members")
    for x, y, z in zip(mem, auroc, accuracy, strict=True):  # drop lines make the height readable
        axes.plot([x, x], [y, y], [min(accuracy.min(), baseline[0]), z], color="0.6", linewidth=0.6)
    axes.scatter([baseline[1]], [baseline[2]], [baseline[0]], marker="*", s=220, color="crimson",
                 edgecolors="k", depthshade=False, label=f"baseline (all {unit_name(result)})")
    axes.set_xlabel(_mem_label(result))
    axes.set_ylabel(f"{score_label(result)} AUROC ({result.config.ood.auroc})")
    axes.set_zlabel("accuracy")
    axes.view_init(elev=22, azim=-58)
    axes.set_title(f"Pareto front, validation ({len(mem)} members)")
    figure.colorbar(points, ax=axes, label="accuracy (validation)", shrink=0.65, pad=0.1)
    # Below the axes: a legend inside them can hide the baseline's star.
    figure.legend(loc="outside lower center", ncols=2, fontsize=8)
    return figure


def _staircase(x: np.ndarray, y: np.ndarray, x_larger_better: bool, y_larger_better: bool):
    """The points non-dominated in two objectives, sorted by x, for a step line."""
    sx = x if x_larger_better else -x
    sy = y if y_larger_better else -y
    keep = np.array([not np.any((sx >= sx[i]) & (sy >= sy[i]) & ((sx > sx[i]) | (sy > sy[i])))
                     for i in range(len(x))])
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def plot_front_pairs(result):
    """Accuracy vs MEM, accuracy vs AUROC, MEM vs AUROC; colour = the third objective; baseline a red star.

    The step line joins the members that no other member beats on that pair
    of objectives (the two-objective front of the projection).
    """
    accuracy, mem, auroc, baseline = _front_points(result)
    auroc_label = f"{score_label(result)} AUROC ({result.config.ood.auroc})"
    # name -> (values, larger is better, axis label, index into ``baseline``)
    objectives = {
        "accuracy": (accuracy, True, "accuracy", 0),
        "mem": (mem, False, _mem_label(result), 1),
        "auroc": (auroc, True, auroc_label, 2),
    }
    pairs = (("mem", "accuracy", "auroc"), ("auroc", "accuracy", "mem"), ("mem", "auroc", "accuracy"))
    figure = new_figure(13.5, 4.2)
    for axes, (x_name, y_name, colour_name) in zip(figure.subplots(1, 3), pairs, strict=True):
        x, x_up, x_label, x_base = objectives[x_name]
        y, y_up, y_label, y_base = objectives[y_name]
        steps_x, steps_y = _staircase(x, y, x_up, y_up)
        # Sorted by x, the attained boundary holds the left point's y when x is minimised, the right one's
        # when both are maximised.
        axes.step(steps_x, steps_y, where="post" if x_up != y_up else "pre", color="0.55", linewidth=1,
                  zorder=1)
        points = axes.scatter(x, y, c=objectives[colour_name][0], cmap="viridis", s=36, edgecolors="k",
                              linewidths=0.4, zorder=2)
        axes.scatter([baseline[x_base]], [baseline[y_base]], marker="*", s=220, color="crimson",
                     edgecolors="k", zorder=3, label=f"baseline (all {unit_name(result)})")
        axes.set_xlabel(x_label + ("" if x_up else "  (lower is better)"))
        axes.set_ylabel(y_label)
        axes.grid(alpha=0.3)
        figure.colorbar(points, ax=axes, label=objectives[colour_name][2])
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", fontsize=8)  # never over the star
    figure.suptitle(f"Pareto front, pairwise projections (validation, {len(mem)} members)")
    return figure


def plot_history(history: list[dict[str, Any]]):
    """Hypervolume of the front per generation (left); best accuracy and AUROC, smallest MEM (right)."""
    generations = np.array([row["generation"] for row in history])
    figure = new_figure(11, 4)
    left, right = figure.subplots(1, 2)
    left.plot(generations, [row["hypervolume"] for row in history], marker="o", color="C0")
    left.set_xlabel("generation")
    left.set_ylabel("hypervolume (reference (1, 1, 1))")
    left.set_title("Hypervolume of the front (validation)")
    left.grid(alpha=0.3)
    for key, label, colour in (("best_accuracy", "best accuracy", "C0"), ("best_auroc", "best AUROC", "C3"),
                               ("smallest_mem", "smallest MEM", "C2")):
        right.plot(generations, [row[key] for row in history], marker="o", label=label, color=colour)
    right.set_xlabel("generation")
    right.set_ylabel("objective (validation)")
    right.set_title("Best value of each objective on the front")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    for axes in (left, right):
        axes.xaxis.get_major_locator().set_params(integer=True)
    return figure


def plot_ensembles(comparison: ensemble.EnsembleComparison, score_label: str = "ODIN",
                   units: str = "features"):
    """Bars per band: ensembles vs the band's best member, test accuracy (left) and test AUROC (right).

    ``score_label`` names the members' OoD score (``ood_scores.LABELS``); ``units`` what the
    masks prune (``head.UNIT_NAMES``).
    """
    figure = new_figure(13, 5)
    left, right = figure.subplots(1, 2)
    panels = (
        (left, "accuracy", "class_members",
         (("majority_vote_accuracy", "majority vote"), ("soft_vote_accuracy", "soft vote"),
          ("best_member_accuracy", "best member in band")),
         comparison.baseline_accuracy),
        (right, "AUROC", "ood_members",
         (("mean_score_auroc", f"mean {score_label} score"),
          ("vote_auroc", f"vote at {comparison.tpr:.0%} TPR"),
          ("best_member_auroc", "best member in band")),
         comparison.baseline_auroc),
    )
    for axes, metric, members, bars, baseline in panels:
        bands = [band for band in comparison.bands if getattr(band, members)]
        positions = np.arange(len(bands))
        width = 0.8 / len(bars)
        values = []
        for offset, (field, label) in enumerate(bars):
            heights = np.array([getattr(band, field) for band in bands])
            values.append(heights)
            colour = "0.6" if field.startswith("best_member") else f"C{offset}"
            axes.bar(positions + (offset - (len(bars) - 1) / 2) * width, heights, width, label=label,
                     color=colour, edgecolor="k", linewidth=0.4)
        axes.axhline(baseline, color="crimson", linestyle="--", linewidth=1, label=f"baseline (all {units})")
        everything = np.concatenate([*values, [baseline]])
        low, high = float(np.nanmin(everything)), float(np.nanmax(everything))
        margin = max(0.01, 0.15 * (high - low))
        # Zoomed: the differences of interest are a few points, not the whole [0, 1].
        axes.set_ylim(max(0.0, low - margin), min(1.0, high + margin) + margin / 2)
        axes.set_xticks(positions, [f"{band.label}\n({len(getattr(band, members))})" for band in bands])
        axes.set_xlabel("percentile band of validation " + (
            "accuracy" if metric == "accuracy" or comparison.ood_ranking == "accuracy" else "AUROC"
        ) + " (members)")
        axes.set_ylabel(f"test {metric}")
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=4, frameon=False)
    left.set_title("Classification ensembles vs best member")
    right.set_title("OoD ensembles vs best member")
    return figure


def plot_feature_frequency(masks: np.ndarray, image_side: int | None = None, units: str = "features"):
    """How often each feature (or neuron) is kept across the front.

    Args:
      masks: (K, L) bool, the front.
      image_side: when the features are the pixels of a square image
        (D = side**2, e.g. the 8x8 digits), also draw the frequencies as that image.
      units: what the bits stand for (``head.UNIT_NAMES``), for the labels.
    """
    masks = np.asarray(masks, bool)
    frequency = masks.mean(axis=0)
    num_members, num_features = masks.shape
    as_image = image_side is not None and image_side * image_side == num_features
    figure = new_figure(11 if as_image else 8, 4)
    axes = figure.subplots(1, 2 if as_image else 1, width_ratios=[1, 1.6] if as_image else None)
    if as_image:
        image_axes, axes = axes
        shown = image_axes.imshow(frequency.reshape(image_side, image_side), cmap="magma", vmin=0, vmax=1)
        image_axes.set_title(f"kept by this fraction of the {num_members} members")
        image_axes.set_xticks([])
        image_axes.set_yticks([])
        figure.colorbar(shown, ax=image_axes, shrink=0.85, label="fraction of members keeping it")
    order = np.argsort(-frequency, kind="stable")
    ranks = np.arange(1, num_features + 1)
    if num_features <= 128:
        axes.bar(ranks, frequency[order], width=1.0, color="C0", edgecolor="k", linewidth=0.2)
    else:
        axes.fill_between(ranks, frequency[order], step="mid", alpha=0.4, color="C0")
        axes.plot(ranks, frequency[order], drawstyle="steps-mid", color="C0")
    axes.set_xlim(0.5, num_features + 0.5)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(f"{units}, most often kept first")
    axes.set_ylabel("fraction of front members keeping it")
    always, never = int(np.sum(frequency == 1)), int(np.sum(frequency == 0))
    axes.set_title(f"{always} of {num_features} {units} kept by every member, {never} by none")
    axes.grid(axis="y", alpha=0.3)
    return figure


def plot_published(comparison: published.PublishedComparison, ours_label: str = "this run (test)"):
    """Accuracy vs MEM (left) and accuracy vs AUROC (right) of the run's front and the authors'.

    The step lines join each front's points that no other point of the same
    front beats on that pair of objectives.
    """
    theirs_label = f"authors, {published.label(comparison.dataset)} (10 runs merged)"
    figure = new_figure(12, 4.6)
    panels = ((1, False, "MEM (fraction of features kept)  (lower is better)"), (2, True, "AUROC"))
    for axes, (column, x_up, x_label) in zip(figure.subplots(1, 2), panels, strict=True):
        for points, label, colour, marker in ((comparison.theirs, theirs_label, "C1", "^"),
                                              (comparison.ours, ours_label, "C0", "o")):
            x, y = points[:, column], points[:, 0]
            steps_x, steps_y = _staircase(x, y, x_up, True)
            axes.step(steps_x, steps_y, where="pre" if x_up else "post", color=colour, linewidth=1,
                      alpha=0.7, zorder=1)
            axes.scatter(x, y, marker=marker, s=34, color=colour, edgecolors="k", linewidths=0.4,
                         label=f"{label}: {len(points)} points", zorder=2)
        axes.set_xlabel(x_label)
        axes.set_ylabel("accuracy")
        axes.grid(alpha=0.3)
    figure.axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"This run's front beside the authors' published {published.label(comparison.dataset)} "
                    f"front: hypervolume {comparison.ours_hypervolume:.4f} vs "
                    f"{comparison.theirs_hypervolume:.4f} (paper: {comparison.published_hypervolume:.4f})")
    return figure


def save_png(figure, path: Path) -> None:
    def write(stream):
        buffer = io.BytesIO()  # render fully before touching the file
        figure.savefig(buffer, format="png", dpi=110)
        stream.write(buffer.getvalue())

    atomic.write_atomically(path, write)


# --------------------------------------------------------------------------- the report


def write_report(run_dir: str | os.PathLike, features: Any = None, *,
                 bands=REPORT_BANDS, tpr: float = voting.DEFAULT_TPR,
                 compare_published: str | None = None) -> Path:
    """Writes the figures, ensembles.json and report.md into a finished run directory.

    Args:
      run_dir: the run directory.
      features: the run's FeatureSet or its path; ``None`` rebuilds the embedded digits.
      bands: ensemble percentile bands (default: the authors' eight and the whole front).
      tpr: InD validation TPR of the members' OoD vote thresholds.
      compare_published: a data set of ``published.PUBLISHED_DATASETS`` (any case):
        also write figures/published.png, published.json and a section of
        report.md setting the run's front beside the authors' published one.

    Returns:
      The path of report.md.

    Raises:
      ValueError: among others, ``compare_published`` names no published front
        (before anything is written).
    """
    if compare_published is not None:
        compare_published = published.dataset_name(compare_published)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("the report needs matplotlib: pip install matplotlib") from None
    path = Path(run_dir)
    result, recorded = search_result.read_run(path)
    rundir.require_writable(path, "write the report")
    featureset = run_features.read_run_features(recorded, features, source=str(path))
    comparison = ensemble.compare_ensembles(result, featureset, bands=bands, tpr=tpr)
    metadata = recorded.get("features") or {}
    image_size = metadata.get("image_size")
    prunes_features = result.config.head.prune == "features"
    pixels = (prunes_features and isinstance(image_size, int)
              and image_size * image_size == result.masks.shape[1])

    figures_dir = path / "figures"
    figures_dir.mkdir(exist_ok=True)
    figures = {
        "front_3d": plot_front_3d(result),
        "front_pairs": plot_front_pairs(result),
        "history": plot_history(result.history),
        "ensembles": plot_ensembles(comparison, score_label(result), unit_name(result)),
        "features": plot_feature_frequency(result.masks, image_size if pixels else None,
                                           head.UNIT_NAMES[result.config.head.prune]),
    }
    against = None
    if compare_published is not None:
        against = compare_with_published(result, compare_published)
        figures[PUBLISHED_FIGURE] = plot_published(against)
    for name, figure in figures.items():
        save_png(figure, figures_dir / f"{name}.png")
    atomic.write_json(path / "ensembles.json", comparison.to_dict())
    if against is not None:
        atomic.write_json(path / "published.json", against.to_dict())
    report = path / "report.md"
    text = render_markdown(result, recorded, comparison, against)
    # Keep the Grad-CAM section `explain` added to an earlier report.md.
    grad_cam = explain_section(report)
    atomic.write_text(report, text.rstrip("\n") + "\n\n" + grad_cam if grad_cam else text)
    return report


def _selected_on_test(result) -> bool:
    """The run measured its objectives on the test split (``SearchConfig.selection``), as the authors did."""
    return result.config.search.selection == "test"


def compare_with_published(result, name: str) -> published.PublishedComparison:
    """The run's front on the test split beside the authors' published front ``name``.

    The run's points are its members' test accuracy, MEM and the authors' AUROC
    (``auroc_paper``, whichever AUROC the run optimised), so that both fronts
    hold the same measures; a diverged member counts as the reference point,
    as in the search (``result.objectives``).
    """
    minimised = objectives(result.test, "paper")
    points = np.column_stack([1.0 - minimised[:, 0], minimised[:, 1], 1.0 - minimised[:, 2]])
    split = "test" if not _selected_on_test(result) else "test (also the split it was selected on)"
    description = (f"{split} accuracy, MEM, {score_label(result)} AUROC as the authors computed it "
                   f"(auroc_paper); selected on {'test' if _selected_on_test(result) else 'validation'} "
                   f"with the {result.config.ood.auroc} AUROC; preset {result.config.preset}")
    return published.compare_to_published(points, name, description)


def _published_section(result, recorded: dict[str, Any], against: published.PublishedComparison) -> list[str]:
    data = published.label(against.dataset)
    name = (recorded.get("features") or {}).get("name", "unnamed")
    odin = result.config.ood
    on_test = _selected_on_test(result)

    def row(what, points, value, count, paper, best):
        return (f"| {what} | {len(points)} ({count}) | {value:.4f} | {paper} "
                f"| {best[0]:.4f} / {best[1]:.4f} / {best[2]:.4f} |")

    if on_test:
        selection = ("This run was searched on the test split, as the authors' were: the comparison is "
                     "like-for-like in that respect.")
    else:
        selection = ("This run selected its front on the validation split and shows here its members' "
                     "**test** numbers, while the authors selected on the test split (they had no validation "
                     "split) and report the same test numbers: their front is tuned on the data it is "
                     "measured on, so it is only like-for-like with a run searched on the test split.")
    lines = [
        f"## Beside the authors' published front ({data})",
        "",
        f"The authors' front is the merge of their 10 runs on {data} (MO-EvoPruneDeepTL, arXiv 2302.10253; "
        f"`{published.source_path(against.dataset)}` of {published.SOURCE_REPOSITORY} at commit "
        f"`{published.SOURCE_COMMIT[:12]}`), AUROC of ODIN at T = 1000 as their code computed it. "
        f"This run is on the data `{name}` and optimised {result.config.search.selection} error, MEM and 1 - "
        f"{score_label(result)} AUROC ({odin.auroc}; preset {result.config.preset}). Its points here "
        f"are test accuracy, MEM and the authors' AUROC of its {score_label(result)} score "
        "(`test_auroc_paper` in `pareto.csv`), so that both fronts hold the same measures. "
        + selection,
        "",
        "Both hypervolumes are computed here the same way: reference (1, 1, 1) on the minimised "
        "error, MEM and 1 - AUROC. A single run's front is usually smaller than a merge of 10.",
        "",
        "| front | points (non-dominated) | hypervolume | paper's hypervolume "
        "| best-accuracy point: accuracy / MEM / AUROC |",
        "|---|---:|---:|---:|---:|",
        row("this run, test", against.ours, against.ours_hypervolume, against.ours_non_dominated, "",
            against.ours_best),
        row(f"authors, {data}, 10 runs merged", against.theirs, against.theirs_hypervolume,
            against.theirs_non_dominated, f"{against.published_hypervolume:.4f}", against.theirs_best),
        "",
        f"This run's hypervolume on the objectives it was selected on ({result.config.search.selection}, "
        f"{odin.auroc} AUROC): "
        f"{result.hypervolume:.4f}. Both fronts' points are in `published.json`.",
        "",
        f"![this run's front beside the authors' published front](figures/{PUBLISHED_FIGURE}.png)",
        "",
    ]
    return lines


def explain_section(report: Path) -> str:
    if not report.is_file():
        return ""
    text = report.read_text()
    start, end = text.find(EXPLAIN_START), text.find(EXPLAIN_END)
    return text[start:end + len(EXPLAIN_END)] + "\n" if start != -1 and end > start else ""


def link_explain_section(report: Path, section: str) -> bool:
    """Appends the explain ``section`` to ``report`` (replacing an earlier one); False without a report.

    ``section`` starts with ``EXPLAIN_START`` and ends with ``EXPLAIN_END``, so
    that a later ``write_report`` keeps it and a later ``explain`` replaces it.
    """
    if not report.is_file():
        return False
    text = report.read_text()
    start, end = text.find(EXPLAIN_START), text.find(EXPLAIN_END)
    if start != -1 and end > start:
        text = text[:start].rstrip("\n") + "\n\n" + text[end + len(EXPLAIN_END):].lstrip("\n")
    atomic.write_text(report, text.rstrip("\n") + "\n\n" + section)
    return True


def _picks(result) -> list[tuple[str, int]]:
    kind = result.config.ood.auroc
    return [
        ("most accurate", int(np.argmax(result.validation["accuracy"]))),
        ("most robust", int(np.argmax(robustness(result.validation, kind)))),
        ("smallest", int(np.argmin(result.validation["mem"]))),
    ]


def render_markdown(result, recorded: dict[str, Any], comparison: ensemble.EnsembleComparison,
                    against: published.PublishedComparison | None = None) -> str:
    """report.md's text: key numbers, the figures (relative links) and the ensemble table.

    With ``against``, also a section comparing the run's front with the authors' published one.
    """
    metadata = recorded.get("features") or {}
    num_features = np.asarray(result.params.hidden_kernel).shape[-2]
    length, units = result.masks.shape[1], head.UNIT_NAMES[result.config.head.prune]
    head_config = result.config.head
    history = result.history
    base_val, base_test = result.baseline_validation, result.baseline_test
    score = score_label(result)
    best = best_on_test(result)
    lines = [
        f"# Run report: {metadata.get('name', 'unnamed')}, preset {result.config.preset}, seed {result.seed}",
        "",
        f"D = {num_features} features, C = {recorded.get('num_classes', '?')} classes; "
        f"head D -> {' -> '.join([str(head_config.hidden)] * head_config.hidden_layers)} -> C, "
        f"pruning {units}; "
        f"population {result.config.search.population_size}, {len(history) - 1} generations, "
        f"{result.evaluations} masks evaluated in {result.wall_time:.0f} s. "
        + ("The front was selected on the test split, as the authors' were: its "
           "validation numbers are its test numbers, and no data was held out of the search."
           if result.config.search.selection == "test" else
           "The front was selected on the validation split; test numbers are reported beside it.")
        + (f" Every metric of the front is the mean over {result.folds} cross-validation folds; the "
           "ensembles and the members' numbers below them are the first fold's heads on the first fold's "
           "test split (the FeatureSet given)." if result.folds > 1 else ""),
        "",
        "## Key numbers",
        "",
        f"- Front: **{len(result.masks)} members**, keeping {int(result.masks.sum(axis=1).min())} to "
        f"{int(result.masks.sum(axis=1).max())} of {length} {units}.",
        f"- Hypervolume (validation objectives error, MEM, 1 - AUROC; reference (1, 1, 1)): "
        f"**{result.hypervolume:.4f}** (generation 0: {history[0]['hypervolume']:.4f}).",
        f"- Best on test, each metric's own member: accuracy **{best['accuracy'][1]:.4f}** (member "
        f"{best['accuracy'][0]}), {score} AUROC **{best['auroc'][1]:.4f}** (member {best['auroc'][0]}); "
        f"baseline (all {units}): accuracy {base_test['accuracy']:.4f}, {score} AUROC "
        f"{base_test['auroc']:.4f}.",
    ]
    # A one-member band is that member, not an ensemble.
    ensembles = [band for band in comparison.bands if len(band.class_members) >= 2]
    if ensembles:
        best = max(ensembles, key=lambda band: band.accuracy_gain)
        lines.append(
            f"- Best ensemble: band {best.label} ({len(best.class_members)} members), majority vote "
            f"**{best.majority_vote_accuracy:.4f}** (soft vote {best.soft_vote_accuracy:.4f}) vs "
            f"{best.best_member_accuracy:.4f} for its best member ({best.accuracy_gain:+.4f})."
        )
    else:
        lines.append("- Ensembles: no band holds two or more members (the front is too small).")
    lines += [
        "",
        f"| head | {units} | MEM | val accuracy | test accuracy | val {score} AUROC | test {score} AUROC "
        "| test FPR95 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| baseline (all {units}) | {length} | 1.000 | {base_val['accuracy']:.4f} "
        f"| {base_test['accuracy']:.4f} | {base_val['auroc']:.4f} | {base_test['auroc']:.4f} "
        f"| {base_test['fpr95']:.4f} |",
    ]
    for label, member in _picks(result):
        lines.append(
            f"| {label} member ({member}) | {int(result.masks[member].sum())} "
            f"| {result.validation['mem'][member]:.3f} | {result.validation['accuracy'][member]:.4f} "
            f"| {result.test['accuracy'][member]:.4f} | {result.validation['auroc'][member]:.4f} "
            f"| {result.test['auroc'][member]:.4f} | {result.test['fpr95'][member]:.4f} |"
        )
    lines += [
        "",
        "AUROC is the exact one (Mann-Whitney, ties counted half) of the OoD score "
        f"{ood_scores.describe(result.config.ood)}; FPR95 takes in-distribution as positive (ODIN paper). "
        f"The search optimised the {result.config.ood.auroc} AUROC. Every member is in `pareto.csv`.",
        "",
    ]
    diverged = int(np.sum(result.validation.get("diverged", 0)))
    if diverged:
        lines += [
            f"**{diverged} of the {len(result.masks)} members diverged** (a training loss not finite, or "
            "above 10 log C at its best epoch; `diverged` in `pareto.csv`): their numbers mean nothing. "
            f"Lower `train.learning_rate` (this run: {result.config.train.learning_rate:g}).",
            "",
        ]
    lines += [
        "## The front",
        "",
        "Each point is a pruned head. Read accuracy against MEM for the size/accuracy trade-off, and "
        "accuracy against AUROC for robustness; the red star is the unpruned head. A member is on the "
        "front because no other member is at least as good on all three objectives and better on one, "
        "so a point that looks dominated in one projection wins on the third objective (its colour).",
        "",
        "![front, pairwise projections](figures/front_pairs.png)",
        "",
        "![front in 3D](figures/front_3d.png)",
        "",
        *(_published_section(result, recorded, against) if against is not None else []),
        "## The search",
        "",
        "![hypervolume and best objectives per generation](figures/history.png)",
        "",
        "## Ensembles",
        "",
        "Members are grouped by percentile bands of validation accuracy (classification) and validation "
        f"{'AUROC' if comparison.ood_ranking == 'auroc' else 'accuracy'} (OoD), as the authors grouped "
        "them; every number is on the test split and the OoD test data. *majority*: majority vote of "
        "predicted classes (ties to the lowest class); *soft*: mean probabilities; *mean-score AUROC*: "
        f"AUROC of the mean {score} score; *vote*: each member thresholds its score at {comparison.tpr:.0%} "
        "TPR on the validation data, the ensemble calls in-distribution by majority (AUROC of the vote "
        "count, TPR / FPR of the call; a tie is out-of-distribution); *authors' vote*: their sweep over "
        "100 thresholds, to compare with the members' AUROC as the authors computed it. *best member*: "
        "the highest test value inside the band (an oracle pick, the authors' comparison). The last two "
        "bands are the upper half of the front and the whole front.",
        "",
        comparison.table(),
        "",
        "![ensembles vs best member](figures/ensembles.png)",
        "",
        "## Features",
        "",
        f"How often each of the {length} {units} is kept across the front: {units} kept by (nearly) every "
        "member are the ones accuracy depends on; those kept by none were pruned everywhere.",
        "",
        f"![{units} frequency](figures/features.png)",
        "",
    ]
    return "\n".join(lines)
