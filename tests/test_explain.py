"""The explain command end to end: image folder -> extract -> tiny search -> Grad-CAM grids."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from image_folders import write_random_folder
from PIL import Image

from evojax_prune.analysis import explain
from evojax_prune.analysis import report as report_module
from evojax_prune.cli import main as cli

SIZE = 64  # 2x2 feature maps

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None, reason="the features extra is not installed"
)


def write_folder(root: Path, layout: dict[str, dict[str, int]], seed: int) -> Path:
    return write_random_folder(root, layout, seed, size=SIZE)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from evojax_prune.config import preset
    from evojax_prune.data.extract import extract_featureset
    from evojax_prune.search.loop import run_search

    base = tmp_path_factory.mktemp("explain")
    ind = write_folder(base / "ind", {"train": {"cat": 8, "dog": 8}, "test": {"cat": 3, "dog": 3}}, seed=0)
    ood = write_folder(base / "ood", {"train": {"x": 8, "y": 8}}, seed=1)
    features = extract_featureset(ind, [ood], image_size=SIZE, weights=None, use_cache=False, batch_size=8)
    config = preset("quick").replace(head={"hidden": 16}, train={"max_epochs": 3},
                                     search={"population_size": 4, "generations": 1})
    run = base / "run"
    run_search(features, config, seed=0, out_dir=run)
    return {"run": run, "ind": ind, "features": features}


def test_command_writes_grids_features_and_report_link(finished_run, capsys):
    run = finished_run["run"]
    (run / "report.md").write_text("# Run report\n\nsome text\n")
    code = cli.main(["explain", str(run), "--images", "3", "--weights", "none", "--top", "5"])
    assert code == 0, capsys.readouterr().err
    out = run / "explain"
    grid = out / "gradcam_01.png"
    assert grid.is_file()
    with Image.open(grid) as picture:
        assert picture.size[0] > picture.size[1] / 3  # columns for the image, baseline and members
    summary = json.loads((out / "features.json").read_text())
    assert summary["random_weights"] is True and summary["split"] == "test"
    assert len(summary["images_shown"]) == 3
    assert {row["label"] for row in summary["images_shown"]} == {0, 1}  # spread over the classes
    heads = summary["heads"]
    assert heads[0]["member"] is None and heads[0]["active_features"] == 2048
    masks = np.load(run / "pareto.npz")["masks"]
    for entry in heads[1:]:
        kept = masks[entry["member"]]
        listed = [row["feature"] for row in entry["top_features"]]
        assert len(listed) <= 5 and all(kept[k] for k in listed)  # only kept features
        means = [row["mean_importance"] for row in entry["top_features"]]
        assert means == sorted(means, reverse=True)
    assert (out / "features.md").read_text().startswith("# Most important kept features")
    # Some head has important features on these images (the random backbone can leave others inactive).
    assert any(entry["top_features"] for entry in heads)
    # The baseline's targets are the labels (--target label), for every head.
    labels = [row["label"] for row in summary["images_shown"]]
    assert all(targets == labels for targets in summary["targets"])

    report = (run / "report.md").read_text()
    assert report.startswith("# Run report")
    assert "![Grad-CAM gradcam_01.png](explain/gradcam_01.png)" in report
    # A second call replaces the folder and the section, it does not append another.
    assert cli.main(["explain", str(run), "--images", "2", "--members", "0", "--weights", "none"]) == 0
    report = (run / "report.md").read_text()
    assert report.count(report_module.EXPLAIN_START) == 1 and report.count("## Grad-CAM") == 1
    assert len(json.loads((out / "features.json").read_text())["images_shown"]) == 2
    assert not [p for p in run.iterdir() if p.name.startswith(".explain")]  # no staging left behind


def test_moved_folder_needs_folder_override(finished_run, tmp_path, capsys):
    run, ind = finished_run["run"], finished_run["ind"]
    moved = tmp_path / "moved"
    shutil.copytree(ind, moved)
    shutil.move(ind, tmp_path / "away")
    try:
        assert cli.main(["explain", str(run), "--images", "1", "--members", "smallest-mem"]) == 2
        assert "--folder" in capsys.readouterr().err
        assert cli.main(["explain", str(run), "--images", "1", "--folder", str(moved), "--quiet"]) == 0
    finally:
        shutil.move(tmp_path / "away", ind)


def test_errors_are_clear(finished_run, tmp_path, capsys):
    run = finished_run["run"]
    assert cli.main(["explain", str(run), "--members", "best-loss"]) == 2
    assert "unknown member" in capsys.readouterr().err
    assert cli.main(["explain", str(run), "--members", "99"]) == 2
    assert "not in the front" in capsys.readouterr().err
    weights_file = tmp_path / "weights.h5"
    weights_file.write_bytes(b"not hdf5")
    assert cli.main(["explain", str(run), "--weights", str(weights_file)]) == 2
    assert "HDF5" in capsys.readouterr().err
    assert cli.main(["explain", str(run), "--weights", str(tmp_path / "missing.h5")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["explain", str(run), "--weights", "imagenet"]) == 2  # not the run's (random) weights
    assert "other weights" in capsys.readouterr().err
    assert cli.main(["explain", str(run), "--folder", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_run_without_recorded_images_is_refused(finished_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run["run"], copy)
    shutil.rmtree(copy / "explain", ignore_errors=True)
    recorded = json.loads((copy / "config.json").read_text())
    del recorded["features"]["source"]  # as for features that did not come from extract
    (copy / "config.json").write_text(json.dumps(recorded))
    assert cli.main(["explain", str(copy), "--weights", "none"]) == 2
    error = capsys.readouterr().err
    assert "do not record the images" in error and "--folder PATH or --tfds NAME" in error
    assert not (copy / "explain").exists()


def test_member_choice_and_spread():
    validation = {"accuracy": np.array([0.9, 0.8, 0.7]), "mem": np.array([0.5, 0.1, 0.3]),
                  "auroc": np.array([0.6, 0.7, 0.9]), "auroc_paper": np.array([0.9, 0.1, 0.1])}
    assert explain.choose_members(explain.DEFAULT_MEMBERS, validation) == [
        ("best-accuracy", 0), ("smallest-mem", 1), ("best-auroc", 2)]
    assert explain.choose_members("best-auroc,0", validation, "paper") == [("best-auroc, member 0", 0)]
    labels = np.array([0, 0, 0, 1, 1, 2])
    assert explain.spread_over_classes(labels, 4).tolist() == [0, 3, 5, 1]


def test_report_keeps_the_grad_cam_section(tmp_path):
    from evojax_prune.analysis.report import EXPLAIN_END as SECTION_END
    from evojax_prune.analysis.report import EXPLAIN_START as SECTION_START
    from evojax_prune.analysis.report import explain_section

    report = tmp_path / "report.md"
    assert explain_section(report) == ""
    report.write_text(
        f"# Report\n\nold numbers\n\n{SECTION_START}\n## Grad-CAM\n![g](explain/a.png)\n{SECTION_END}\n"
    )
    section = explain_section(report)
    assert section.startswith(SECTION_START) and section.rstrip().endswith(SECTION_END)
    assert "old numbers" not in section and "explain/a.png" in section
