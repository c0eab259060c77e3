"""The authors' published fronts (analysis/published.py) and ``report --compare-published``.

The references are independent of the code under test: the line counts and
best-accuracy points of the authors' files as read from their repository
(docs/PROTOCOL.md lists the latter), pymoo's hypervolume and non-dominated
sorting, and the paper's printed hypervolumes.
"""

import csv
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from report_runs import copy_run

from evojax_prune.analysis import published, report
from evojax_prune.cli import main as cli

PACKAGE = Path(published.__file__).parent
# Members per merged front, counted in the authors' files at commit 67d5ad78.
SIZES = {"rps": 72, "painting": 70, "leaves": 74, "cataract": 38, "plants": 84, "srsmas": 92}
# The paper's best-accuracy point of each front (accuracy / MEM / AUROC to 3 decimals, docs/PROTOCOL.md).
BEST_ACCURACY = {
    "srsmas": (0.879, 0.275, 0.978), "rps": (1.000, 0.230, 0.899), "leaves": (0.941, 0.328, 0.904),
    "painting": (0.954, 0.330, 0.982), "cataract": (0.760, 0.349, 0.447), "plants": (0.479, 0.424, 0.735),
}


def pymoo_hypervolume(points):
    """Hypervolume of (accuracy, MEM, AUROC) points by pymoo, reference (1, 1, 1) on error, MEM, 1 - AUROC."""
    points = np.asarray(points, np.float64)
    objectives = np.column_stack([1 - points[:, 0], points[:, 1], 1 - points[:, 2]])
    return float(HV(ref_point=np.ones(3))(objectives))


@pytest.mark.parametrize("name", published.PUBLISHED_DATASETS)
def test_every_shipped_front_parses_whole_within_the_unit_cube(name):
    front = published.published_front(name)
    assert front.shape == (SIZES[name], 3) and front.dtype == np.float64
    assert np.all((front >= 0) & (front <= 1))
    # MEM is a count of the 2048 features over 2048: each value a multiple of 1/2048.
    np.testing.assert_array_equal(front[:, 1] * 2048, np.round(front[:, 1] * 2048))
    text = (PACKAGE / "published" / f"{name}.txt").read_text()
    assert published.SOURCE_COMMIT in text and published.source_path(name) in text
    data = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(data) == SIZES[name] and all(len(line.split()) == 3 for line in data)


@pytest.mark.parametrize("name", published.PUBLISHED_DATASETS)
def test_the_best_accuracy_point_is_the_papers(name):
    comparison = published.compare_to_published(published.published_front(name)[:1], name)
    np.testing.assert_allclose(comparison.theirs_best, BEST_ACCURACY[name], atol=5e-4)


@pytest.mark.parametrize("name", published.PUBLISHED_DATASETS)
def test_every_published_point_is_non_dominated(name):
    front = published.published_front(name)
    objectives = published.minimised(front)
    first = NonDominatedSorting().do(objectives, only_non_dominated_front=True)
    assert len(first) == len(front)
    assert published.non_dominated(front).all()


@pytest.mark.parametrize("name", published.PUBLISHED_DATASETS)
def test_published_hypervolume_is_reproduced_from_the_points(name):
    front = published.published_front(name)
    ours = published.front_hypervolume(front)
    assert ours == pytest.approx(pymoo_hypervolume(front), rel=1e-12)
    # Found for all six: the paper's number is ours rounded to 4 decimals (|difference| <= 4e-5).
    assert round(ours, 4) == published.published_hypervolume(name)
    assert abs(ours - published.published_hypervolume(name)) <= 5e-5


def test_names_are_case_insensitive_and_unknown_ones_list_the_choices():
    assert published.dataset_name("PAINTING") == "painting"
    assert published.label("cataract") == "CATARACT"
    assert published.source_path("Cataract") == "gradcams/super_pareto_ojos.txt"
    np.testing.assert_array_equal(published.published_front("RPS"), published.published_front("rps"))
    with pytest.raises(ValueError, match=r"'pinturas'.*rps, painting, leaves, cataract, plants, srsmas"):
        published.published_front("pinturas")


def test_comparison_of_a_dominated_subset_and_of_a_bad_shape():
    theirs = published.published_front("leaves")
    # A front worse by 0.1 accuracy everywhere: dominated, a smaller hypervolume, the same size.
    worse = theirs - [0.1, 0, 0]
    comparison = published.compare_to_published(worse, "Leaves", "a test")
    assert comparison.ours_hypervolume == pytest.approx(pymoo_hypervolume(worse), rel=1e-12)
    assert comparison.ours_hypervolume < comparison.theirs_hypervolume
    np.testing.assert_allclose(comparison.ours_best, comparison.theirs_best - [0.1, 0, 0])
    numbers = comparison.to_dict()
    assert numbers["ours"]["size"] == numbers["published"]["size"] == SIZES["leaves"]
    assert numbers["published"]["published_hypervolume"] == 0.8495
    source = f"{published.SOURCE_COMMIT}/gradcams/super_pareto_leaves.txt"
    assert numbers["published"]["source"].endswith(source)
    # A point worse than another on all three objectives is counted out of the non-dominated ones.
    dominated = theirs[:1] + np.array([-0.01, 0.01, -0.01])
    with_dominated = published.compare_to_published(np.vstack([theirs[:3], dominated]), "leaves")
    assert with_dominated.ours_non_dominated == 3
    with pytest.raises(ValueError, match=r"\(K, 3\).*\(4, 2\)"):
        published.compare_to_published(np.zeros((4, 2)), "leaves")


def test_an_installed_package_ships_every_front():
    settings = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())
    patterns = settings["tool"]["setuptools"]["package-data"]["evojax_prune.analysis"]
    shipped = {path.name for pattern in patterns for path in PACKAGE.glob(pattern)}
    assert shipped == {f"{name}.txt" for name in published.PUBLISHED_DATASETS}


def test_report_compare_published_writes_the_section_figure_and_json(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    assert cli.main(["report", str(run), "--compare-published", "RPS"]) == 0
    out = capsys.readouterr().out
    assert "figures/published.png" in out and "(paper: 0.8657)" in out

    with open(run / "pareto.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert not any(float(row["diverged"]) for row in rows)
    ours = np.array([[float(row["test_accuracy"]), float(row["mem"]), float(row["test_auroc_paper"])]
                     for row in rows])
    expected_ours = pymoo_hypervolume(ours)
    expected_theirs = pymoo_hypervolume(published.published_front("rps"))

    numbers = json.loads((run / "published.json").read_text())
    assert numbers["dataset"] == "rps" and numbers["hypervolume_reference"] == [1.0, 1.0, 1.0]
    # pareto.csv rounds to 6 decimals.
    assert numbers["ours"]["hypervolume"] == pytest.approx(expected_ours, abs=1e-5)
    np.testing.assert_allclose(numbers["ours"]["points"], ours, atol=1e-6)
    assert numbers["published"]["hypervolume"] == pytest.approx(expected_theirs, rel=1e-12)
    assert numbers["published"]["size"] == 72 and numbers["ours"]["size"] == len(rows)
    assert "selected on validation" in numbers["ours"]["description"]

    text = (run / "report.md").read_text()
    assert "## Beside the authors' published front (RPS)" in text
    assert "gradcams/super_pareto_rps.txt" in text
    assert "only like-for-like with a run searched on the test split" in text
    assert "(exact; preset quick)" in text  # which AUROC the run optimised
    best = ours[np.lexsort((-ours[:, 2], ours[:, 1], -ours[:, 0]))[0]]
    assert (f"| this run, test | {len(rows)} ({numbers['ours']['non_dominated']}) | "
            f"{numbers['ours']['hypervolume']:.4f} |  "
            f"| {best[0]:.4f} / {best[1]:.4f} / {best[2]:.4f} |") in text
    assert (f"| authors, RPS, 10 runs merged | 72 (72) | {expected_theirs:.4f} | 0.8657 "
            "| 1.0000 / 0.2300 / 0.8985 |") in text
    assert "](figures/published.png)" in text
    figure = (run / "figures" / "published.png").read_bytes()
    assert figure[:8] == b"\x89PNG\r\n\x1a\n" and len(figure) > 10_000
    for name in report.FIGURES:  # the rest of the report is there too
        assert (run / "figures" / f"{name}.png").is_file()
    assert [path.name for path in run.rglob("*.tmp")] == []


def test_report_with_an_unknown_published_name_exits_2_and_writes_nothing(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)
    before = sorted(path.relative_to(run) for path in run.rglob("*"))
    assert cli.main(["report", str(run), "--compare-published", "digits"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "'digits'" in err and "rps, painting, leaves, cataract, plants, srsmas" in err
    assert captured.out == ""
    assert sorted(path.relative_to(run) for path in run.rglob("*")) == before
