"""Grad-CAM heat maps of front members: ``evojax-prune explain RUN_DIR``.

For a finished run on image features (``extract``), finds the images again from
the FeatureSet metadata recorded in config.json (the folder or TFDS source, the
split settings and the image size; ``--folder`` / ``--tfds`` override the
source), rebuilds the frozen ResNet-50 with the same weights, and writes
into ``RUN_DIR/explain/``:

  gradcam_NN.png   grids: rows are images, columns the original, the all-ones
                   baseline head and each chosen member (Grad-CAM overlays)
  features.json    per head: the most important kept features (largest mean
                   |gradient x feature| over the images), and what was explained
  features.md      the same as Markdown tables

The folder is written beside the run under a temporary name and renamed into
place, so it is either the previous complete one or the new complete one. When
``RUN_DIR/report.md`` exists, a "Grad-CAM" section linking the files is
appended to it (replaced on a later call).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune.analysis import report
from evojax_prune.result import robustness
from evojax_prune.run import rundir, search_result

DEFAULT_MEMBERS = "best-accuracy,smallest-mem,best-auroc"
MEMBER_NAMES = ("best-accuracy", "smallest-mem", "best-auroc")
SPLIT_ROLES = {"test": "test", "val": "val", "validation": "val", "train": "train"}
IMAGES_PER_GRID = 8
EXPLAIN_DIR = "explain"


# --------------------------------------------------------------------------- choosing what to explain


def choose_members(spec: str, validation: dict[str, np.ndarray],
                   auroc_kind: str = "exact") -> list[tuple[str, int]]:
    """Front members named by ``spec``: names and/or indexes, comma-separated.

    Args:
      spec: e.g. ``"best-accuracy,smallest-mem,best-auroc"`` or ``"0,3"`` (indexes into
        pareto.npz's front, as in pareto.csv's ``member`` column), or a mix.
      validation: the front's validation metrics (``accuracy``, ``mem``, ``auroc``,
        ``auroc_paper``), each (F,).
      auroc_kind: the AUROC the search optimised (``"exact"`` or ``"paper"``).

    Returns:
      (label, member index) pairs in the order asked; a member picked twice appears
      once, its labels joined.

    Raises:
      ValueError: an unknown name or an index outside the front.
    """
    size = len(validation["accuracy"])
    auroc = robustness(validation, auroc_kind)
    by_name = {
        "best-accuracy": int(np.argmax(validation["accuracy"])),
        "smallest-mem": int(np.argmin(validation["mem"])),
        "best-auroc": int(np.argmax(auroc)),
    }
    labels: dict[int, list[str]] = {}
    for word in (part.strip() for part in spec.split(",")):
        if not word:
            continue
        if word in by_name:
            index, label = by_name[word], word
        elif word.lstrip("-").isdigit():
            index, label = int(word), f"member {word}"
            if not 0 <= index < size:
                raise ValueError(f"members={spec!r}: member {index} is not in the front "
                                 f"(members 0 to {size - 1})")
        else:
            raise ValueError(
                f"members={spec!r}: unknown member {word!r}; use {', '.join(MEMBER_NAMES)} "
                f"or indexes 0 to {size - 1}"
            )
        labels.setdefault(index, []).append(label)
    if not labels:
        raise ValueError(f"members={spec!r}: no members given")
    return [(", ".join(names), index) for index, names in labels.items()]


def spread_over_classes(labels: np.ndarray, count: int) -> np.ndarray:
    """``count`` positions into ``labels``, taking classes in turn (first image of each, then second...).

    Deterministic; every class is shown before any class is shown twice.

    Returns:
      (min(count, N),) int64 positions.
    """
    labels = np.asarray(labels)
    rank_in_class = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank_in_class[members] = np.arange(len(members))
    order = np.lexsort((labels, rank_in_class))  # by rank in class, then class
    return order[:count].astype(np.int64)


# --------------------------------------------------------------------------- finding the images and weights


def locate_dataset(metadata: dict[str, Any], *, folder: str | None = None, tfds: str | None = None,
                   data_dir: str | None = None):
    """The run's image data set: ``--folder`` / ``--tfds`` if given, else the recorded source.

    Raises:
      ValueError: the metadata records no image source and none was given.
      FileNotFoundError: the recorded folder is gone (the message says to pass --folder).
    """
    from evojax_prune.data import images

    if folder and tfds:
        raise ValueError("give folder= or tfds=, not both")
    if folder:
        return images.load_folder(folder)
    if tfds:
        return images.load_tfds(tfds, data_dir=data_dir)
    source = metadata.get("source")
    name = metadata.get("name", "unnamed")
    if not isinstance(source, str) or not source.startswith((images.FOLDER_PREFIX, images.TFDS_PREFIX)):
        raise ValueError(
            f"the run's features {name!r} do not record the images they came from (no folder or TFDS "
            "source in config.json); Grad-CAM needs the images: pass folder=PATH or tfds=NAME"
        )
    if source.startswith(images.FOLDER_PREFIX):
        root = Path(source[len(images.FOLDER_PREFIX):])
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root}: the image folder the run's features came from is gone; pass folder=PATH "
                "with the same images (layout PATH/SPLIT/LABEL/IMAGE)"
            )
        return images.load_folder(root)
    return images.load_tfds(source[len(images.TFDS_PREFIX):], data_dir=data_dir)


def split_images(dataset, metadata: dict[str, Any], split: str, num_classes: int):
    """(ImageSplit, (n,) indices) of the run's ``split``, rebuilt as ``extract`` made it.

    Uses the recorded split settings (seed, held-out fractions) and checks the
    split sizes and class count against the metadata.

    Raises:
      ValueError: unknown split, or images that no longer match the run's.
    """
    from evojax_prune.data import splits

    role = SPLIT_ROLES.get(split)
    if role is None:
        raise ValueError(f"split={split!r}: must be one of test, val, train")
    if len(dataset.class_names) != num_classes:
        raise ValueError(
            f"{dataset.source} has {len(dataset.class_names)} classes, the run's head has {num_classes}: "
            "not the images the run was trained on"
        )
    recorded = metadata.get("splits") or {}
    plan = splits.make_splits(
        dataset,
        val_fraction=float((recorded.get("val") or {}).get("fraction", 0.2)),
        test_fraction=float((recorded.get("test") or {}).get("fraction_of_train", 0.2)),
        seed=int(recorded.get("seed", 0)),
    )
    for name in ("train", "val", "test"):
        expected = (recorded.get(name) or {}).get("size")
        found = len(getattr(plan, name)[1])
        if expected is not None and int(expected) != found:
            raise ValueError(
                f"{dataset.source}: its {name} split now has {found} images, the run's had {expected}; "
                "the images changed since extract (pass folder= or tfds= with the run's images)"
            )
    return getattr(plan, role)


def resolve_weights(text: str | None, metadata: dict[str, Any]):
    """The backbone weights: ``--weights`` if given, else those recorded by ``extract``; checked.

    Raises:
      WeightsUnavailableError: the recorded weights file is gone.
      ValueError: the weights given are not those the run's features were made with.
    """
    from evojax_prune.data import backbone
    from evojax_prune.data.extract import parse_weights

    recorded = metadata.get("backbone") or {}
    kind = recorded.get("weights")
    if text is None:
        if kind == "random":
            return None
        if kind == "file":
            path = Path(recorded.get("file", ""))
            if not path.is_file():
                raise backbone.WeightsUnavailableError(
                    f"{path}: the weights file the run's features were made with is gone; pass "
                    "weights=PATH (a copy of it) or weights=imagenet for Keras' "
                    f"{backbone.IMAGENET_WEIGHTS_FILE}"
                )
            return str(path)
        weights = "imagenet"
    else:
        weights = parse_weights(text)
        expected = {"random": "random", "imagenet": "imagenet"}.get(kind)
        if kind == "file" and recorded.get("sha256"):
            expected = "sha256:" + str(recorded["sha256"])[:16]
        given = backbone.weights_id(weights)  # a missing or non-HDF5 file fails here, as in extract
        if expected is not None and given != expected:
            raise ValueError(
                f"weights={text}: the run's features were made with other weights ({expected}, given "
                f"{given}); explaining a head on another backbone is meaningless"
            )
    if weights == "imagenet":
        backbone.imagenet_weights_file()  # not cached and no internet: extract's error, before any work
    return weights


# --------------------------------------------------------------------------- drawing and writing


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def draw_grid(pictures: np.ndarray, maps: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray,
              labels: np.ndarray, class_names, column_titles: list[str], row_names: list[str]):
    """One PNG grid as a matplotlib Figure.

    Args:
      pictures: (B, S, S, 3) uint8 images.
      maps: (M, B, S, S) Grad-CAM maps (each normalised by its own maximum here).
      predictions: (M, B) int predicted classes; probabilities: (M, B) their softmax probability.
      labels: (B,) true classes; class_names: C names.
      column_titles: M head names; row_names: B image names.
    """
    from evojax_prune.analysis import gradcam

    heads, count = maps.shape[:2]
    figure = _figure(2.0 * (heads + 1), 2.1 * count + 0.4)
    axes = figure.subplots(count, heads + 1, squeeze=False)
    for row in range(count):
        axes[row, 0].imshow(pictures[row])
        axes[row, 0].set_title(f"{row_names[row]}\nlabel: {class_names[labels[row]]}", fontsize=7)
        for column in range(heads):
            heat = gradcam.normalise_map(maps[column, row])
            cell = axes[row, column + 1]
            cell.imshow(gradcam.overlay(pictures[row], heat))
            predicted = int(predictions[column, row])
            verdict = "right" if predicted == int(labels[row]) else "wrong"
            title = f"{class_names[predicted]} ({probabilities[column, row]:.2f}, {verdict})"
            if not np.any(maps[column, row] > 0):
                title += "\nmap all zero"
            cell.set_title((column_titles[column] + "\n" if row == 0 else "") + title, fontsize=7)
    for cell in axes.flat:
        cell.set_xticks([])
        cell.set_yticks([])
    from matplotlib import cm, colors

    scale = cm.ScalarMappable(colors.Normalize(0.0, 1.0), cmap=gradcam.OVERLAY_COLORMAP)
    figure.colorbar(scale, ax=axes[:, 1:] if heads else axes, shrink=0.6, aspect=30,
                    label="Grad-CAM, each map over its own maximum")
    return figure


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def features_markdown(heads: list[dict[str, Any]], context: dict[str, Any]) -> str:
    """features.md: one table per head of its most important kept features."""
    lines = [
        "# Most important kept features",
        "",
        f"Importance of feature k for one image: |g_k x f_k|, g = d logit / d f (the head's gradient wrt "
        f"its input feature, 0 for a pruned feature), f = the pooled ResNet-50 feature; averaged over "
        f"{context['images']} {context['split']} images, logit of the {context['target']} class. "
        "*share*: the feature's part of the head's total importance.",
        "",
    ]
    for entry in heads:
        lines += [f"## {entry['title']}", ""]
        if not entry["top_features"]:
            lines.append("Every kept feature has zero gradient x feature on these images: the head's "
                         "hidden units are inactive there (its logits are then its output bias), or "
                         "its kept features are zero there.")
        else:
            lines += ["| rank | feature | mean importance | share |", "|---:|---:|---:|---:|"]
        for rank, row in enumerate(entry["top_features"], start=1):
            lines.append(f"| {rank} | {row['feature']} | {row['mean_importance']:.4g} | {row['share']:.1%} |")
        lines.append("")
    return "\n".join(lines)


def report_section(grids: list[str], context: dict[str, Any]) -> str:
    """The report.md section linking the explain files (between markers, so it can be replaced)."""
    lines = [
        report.EXPLAIN_START,
        "## Grad-CAM",
        "",
        f"Where each head looks: Grad-CAM of the {context['target']} class on {context['images']} "
        f"{context['split']} images (columns: the image, the all-ones baseline head, then "
        f"{', '.join(context['members'])}). Each map is scaled to its own maximum; red is high. Pruned "
        "features carry no weight. The most important kept features of each head are in "
        f"[{EXPLAIN_DIR}/features.md]({EXPLAIN_DIR}/features.md).",
        "",
    ]
    lines += [f"![Grad-CAM {name}]({EXPLAIN_DIR}/{name})" for name in grids]
    lines += ["", report.EXPLAIN_END, ""]
    return "\n".join(lines)


def replace_directory(staged: Path, target: Path) -> None:
    """Puts the complete directory ``staged`` at ``target`` by renames (the old one removed after)."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- the whole thing


def explain_run(run_dir: str | os.PathLike, *, members: str = DEFAULT_MEMBERS, num_images: int = 8,
                split: str = "test", weights: str | None = None, folder: str | None = None,
                tfds: str | None = None, data_dir: str | None = None, target: str = "label",
                top: int = 10, batch_size: int = 8, on_message=None) -> Path:
    """Writes Grad-CAM grids and the most important kept features into ``RUN_DIR/explain``.

    Args:
      run_dir: a finished run on image features (``extract``).
      members: which front members (:func:`choose_members`).
      num_images: images to explain, spread over the classes.
      split: ``test``, ``val`` or ``train``.
      weights: ``--weights`` text (``imagenet``, ``none``, a path), ``None``: as recorded.
      folder, tfds, data_dir: where the images are, when the metadata is not enough.
      target: explain the true ``label`` or each head's ``predicted`` class.
      top: features listed per head.
      batch_size: images per jitted call.
      on_message: called with a line of news.

    Returns:
      The explain directory.
    """
    from evojax_prune.analysis import gradcam
    from evojax_prune.data import backbone

    say = on_message or (lambda text: None)
    if num_images < 1:
        raise ValueError(f"num_images={num_images}: must be at least 1")
    if top < 1:
        raise ValueError(f"top={top}: must be at least 1")
    if target not in gradcam.TARGET_MODES:
        raise ValueError(f"target={target!r}: must be one of {gradcam.TARGET_MODES}")
    path = Path(run_dir)
    result, recorded = search_result.read_run(path)
    rundir.require_writable(path, "write the heat maps")
    metadata = recorded.get("features") or {}
    if result.config.head.prune != "features":
        raise ValueError(
            f"{path}: the run's chromosomes prune neurons (HeadConfig.prune {result.config.head.prune!r}); "
            "explain shows what the features a head keeps look at, which a neuron mask does not choose: "
            "explain a run that prunes features (HeadConfig.prune 'features', the default)"
        )
    num_features = result.masks.shape[1]
    if num_features != backbone.FEATURE_DIM:
        raise ValueError(
            f"{path}: the run's heads take {num_features} features, not ResNet-50's {backbone.FEATURE_DIM}: "
            "Grad-CAM needs a run on image features (evojax-prune extract)"
        )
    chosen = choose_members(members, result.validation, result.config.ood.auroc)
    resolved_weights = resolve_weights(weights, metadata)
    dataset = locate_dataset(metadata, folder=folder, tfds=tfds, data_dir=data_dir)
    image_split, indices = split_images(dataset, metadata, split, int(recorded.get("num_classes", 0)))
    image_size = int(metadata.get("image_size") or 0)
    picked = indices[spread_over_classes(image_split.labels[indices], num_images)]
    pictures = np.asarray(image_split.images(image_size, picked))
    labels = image_split.labels[picked]

    say(f"building ResNet-50 ({backbone.weights_id(resolved_weights)} weights, {image_size}x{image_size})")
    model = backbone.build_resnet50(image_size, resolved_weights)
    explainer = gradcam.GradCam(model, batch_size=min(batch_size, len(picked)))
    stacked = _stack_heads(result, [index for _, index in chosen])
    masks = np.concatenate([np.ones((1, num_features), bool), result.masks[[i for _, i in chosen]]])
    say(f"Grad-CAM of {len(masks)} heads on {len(picked)} {split} images")
    explanation = explainer(pictures, labels, stacked, masks, target=target)

    titles = [f"baseline ({num_features} features)"] + [
        f"{label} (#{index}, {int(result.masks[index].sum())} features)" for label, index in chosen
    ]
    probabilities = _softmax(explanation.logits)
    predictions = np.argmax(explanation.logits, axis=-1)
    row_names = [f"{split}[{int(i)}]" for i in picked]
    importance = explanation.importance
    heads = []
    for column, title in enumerate(titles):
        heads.append({
            "title": title,
            "member": None if column == 0 else chosen[column - 1][1],
            "active_features": int(masks[column].sum()),
            "accuracy_on_these_images": float(np.mean(predictions[column] == labels)),
            "top_features": gradcam.top_features(importance[column], masks[column], top),
        })
    context = {"images": len(picked), "split": split, "target": target,
               "members": [label for label, _ in chosen]}
    summary = {
        **context,
        "run": str(path),
        "source": dataset.source,
        "image_size": image_size,
        "backbone_weights": backbone.weights_id(resolved_weights),
        "random_weights": resolved_weights is None,
        "map": "Grad-CAM: ReLU(sum_k alpha_k A_k), alpha = position mean of d logit / d A "
               "(= head gradient wrt the pooled feature / (h*w)); pruned features get alpha = 0",
        "importance": "mean over images of |g_k * f_k|, g = d logit / d pooled feature",
        "images_shown": [{"name": image_split.item_name(int(i)), "index": int(i), "label": int(y)}
                         for i, y in zip(picked, labels, strict=True)],
        "targets": explanation.targets.tolist(),
        "predictions": predictions.tolist(),
        "heads": heads,
    }

    staged = Path(tempfile.mkdtemp(prefix=f".{EXPLAIN_DIR}-", dir=path))
    try:
        grids = []
        for page, start in enumerate(range(0, len(picked), IMAGES_PER_GRID), start=1):
            rows = slice(start, start + IMAGES_PER_GRID)
            figure = draw_grid(pictures[rows], explanation.maps[:, rows], predictions[:, rows],
                               np.take_along_axis(probabilities, predictions[..., None], -1)[..., 0][:, rows],
                               labels[rows], dataset.class_names, titles, row_names[rows])
            name = f"gradcam_{page:02d}.png"
            (staged / name).write_bytes(_png_bytes(figure))
            grids.append(name)
        summary["grids"] = grids
        (staged / "features.json").write_text(json.dumps(summary, indent=2) + "\n")
        (staged / "features.md").write_text(features_markdown(heads, context))
        os.chmod(staged, 0o755)
        replace_directory(staged, path / EXPLAIN_DIR)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    report.link_explain_section(path / "report.md", report_section(grids, context))
    return path / EXPLAIN_DIR


def _stack_heads(result, members: list[int]):
    """The baseline head then the chosen members' heads, stacked: HeadParams with a leading axis."""
    from evojax_prune.head import HeadParams

    def stacked(name: str) -> np.ndarray:
        baseline = np.asarray(getattr(result.baseline_params, name))[None]
        return np.concatenate([baseline, np.asarray(getattr(result.params, name))[members]])

    return HeadParams(*(stacked(name) for name in ("hidden_kernel", "output_kernel", "output_bias")))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- the command


def register(parser: argparse.ArgumentParser) -> None:
    """Adds the ``explain`` arguments (cheap: imports nothing heavy)."""
    parser.description = (
        "Grad-CAM heat maps of the all-ones baseline head and chosen front members on the run's images, "
        "and each head's most important kept features, written into RUN_DIR/explain/."
    )
    add = parser.add_argument
    add("run_dir", metavar="RUN_DIR", help="a finished run on image features (evojax-prune extract)")
    add("--members", default=DEFAULT_MEMBERS, metavar="NAMES|INDEXES",
        help=f"comma-separated {', '.join(MEMBER_NAMES)} and/or front indexes (default: all three names)")
    add("--images", type=int, default=8, metavar="N",
        help="images to explain, spread over classes (default 8)")
    add("--split", default="test", choices=["test", "val", "validation", "train"],
        help="which split's images (default test)")
    add("--target", default="label", choices=["label", "predicted"],
        help="explain the true class or each head's predicted class (default label)")
    add("--weights", metavar="PATH|imagenet|none",
        help="backbone weights (default: those the run's features were extracted with)")
    add("--folder", metavar="PATH", help="the image folder, when the recorded one moved")
    add("--tfds", metavar="NAME", help="the TFDS data set, when the metadata does not say")
    add("--data-dir", metavar="DIR", help="TFDS data directory (default TFDS' own)")
    add("--top", type=int, default=10, metavar="K", help="important features listed per head (default 10)")
    add("--batch-size", type=int, default=8, metavar="B", help="images per jitted call (default 8)")
    add("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(handler=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    """The ``explain`` command."""
    say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    out = explain_run(
        args.run_dir, members=args.members, num_images=args.images, split=args.split, weights=args.weights,
        folder=args.folder, tfds=args.tfds, data_dir=args.data_dir, target=args.target, top=args.top,
        batch_size=args.batch_size, on_message=say,
    )
    summary = json.loads((out / "features.json").read_text())
    say(f"explain: {out} ({', '.join(summary['grids'])}, features.json, features.md)")
    if summary["random_weights"]:
        say("warning: random backbone weights: these maps do not explain an ImageNet backbone")
    return 0
