"""``evojax-prune report`` on a finished (tiny) run: figures, report.md, errors, hypervolume history."""

import csv
import dataclasses
import json
import struct

import numpy as np
import pytest
from pymoo.indicators.hv import HV
from report_runs import copy_run, tiny_config

from evojax_prune.analysis import ensemble, report
from evojax_prune.cli import main as cli
from evojax_prune.data import embedded
from evojax_prune.run import rundir, search_result
from evojax_prune.search.loop import run_search

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    return embedded.digits()


@pytest.fixture(scope="module")
def finished(tiny_run):
    """A finished run directory and its SearchResult (conftest.py's, shared with test_published)."""
    return tiny_run


@pytest.fixture(scope="module")
def reported(finished):
    """The run directory after ``evojax-prune report`` (through the CLI's entry point)."""
    _, out = finished
    assert cli.main(["report", str(out)]) == 0
    return out


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_report_writes_every_figure_and_the_report(reported):
    for name in report.FIGURES:
        width, height = png_size(reported / "figures" / f"{name}.png")
        assert width >= 500 and height >= 300, name
        assert (reported / "figures" / f"{name}.png").stat().st_size > 10_000, name
    text = (reported / "report.md").read_text()
    for name in report.FIGURES:
        assert f"](figures/{name}.png)" in text
    # Nothing half-written is left behind.
    leftovers = [p.name for p in reported.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_report_states_the_key_numbers(finished, reported):
    result, _ = finished
    text = (reported / "report.md").read_text()
    summary = json.loads((reported / "summary.json").read_text())
    assert f"**{len(result.masks)} members**" in text
    assert f"**{summary['hypervolume']:.4f}**" in text
    assert f"accuracy {summary['baseline']['test']['accuracy']:.4f}" in text
    assert f"**{result.test['accuracy'].max():.4f}**" in text
    assert "| 85-95 |" in text and "| 50-100 |" in text and "| 0-100 |" in text
    if len(result.masks) >= 2:  # the whole-front band is then an ensemble
        assert "- Best ensemble: band" in text
    else:
        assert "no band holds two or more members" in text


def test_ensembles_json_agrees_with_the_run(finished, reported):
    result, _ = finished
    numbers = json.loads((reported / "ensembles.json").read_text())
    assert [band["band"] for band in numbers["bands"]] == [list(band) for band in report.REPORT_BANDS]
    whole = numbers["bands"][-1]
    assert whole["class_members"] == list(range(len(result.masks)))
    # Recomputed member metrics reproduce the run's own test metrics.
    np.testing.assert_allclose(numbers["members"]["accuracy"], result.test["accuracy"], atol=1.5 / 360)
    assert numbers["best_member"]["accuracy"] == pytest.approx(result.test["accuracy"].max(), abs=1.5 / 360)
    for band in numbers["bands"]:
        if band["class_members"]:
            best = max(result.test["accuracy"][band["class_members"]])
            assert band["best_member_accuracy"] == pytest.approx(best, abs=1.5 / 360)
            assert 0 <= band["majority_vote_accuracy"] <= 1
        else:
            assert band["majority_vote_accuracy"] is None


def test_load_run_round_trips_the_search_result(finished):
    result, out = finished
    loaded, recorded = search_result.read_run(out)
    np.testing.assert_array_equal(loaded.masks, result.masks)
    for name in result.validation:
        np.testing.assert_allclose(loaded.validation[name], result.validation[name])
        np.testing.assert_allclose(loaded.test[name], result.test[name])
    np.testing.assert_array_equal(loaded.params.hidden_kernel, result.params.hidden_kernel)
    assert loaded.config == result.config and loaded.history == result.history
    assert recorded["features"]["name"] == "digits"


def test_recorded_hypervolume_equals_pymoo_on_the_final_front(finished):
    result, out = finished
    with open(out / "pareto.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert result.config.ood.auroc == "exact"
    objectives = np.array([[1 - float(row["val_accuracy"]), float(row["mem"]), 1 - float(row["val_auroc"])]
                           for row in rows])
    expected = HV(ref_point=np.ones(3))(objectives)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    # pareto.csv rounds to 6 decimals: a few 1e-7 of volume.
    assert history[-1]["hypervolume"] == pytest.approx(expected, abs=1e-5)
    assert json.loads((out / "summary.json").read_text())["hypervolume"] == pytest.approx(expected, abs=1e-5)
    assert history[-1]["front_size"] == len(rows)
    assert 0 < history[0]["hypervolume"] <= 1


def test_recorded_hypervolume_equals_pymoo_on_the_unrounded_front(finished):
    result, _ = finished
    assert len(result.history) == result.config.search.generations + 1
    assert all(0 < record["hypervolume"] < 1 for record in result.history)
    expected = HV(ref_point=np.ones(3))(result.objectives)
    assert result.history[-1]["hypervolume"] == pytest.approx(expected, rel=1e-9)
    assert result.hypervolume == pytest.approx(expected, rel=1e-9)


def test_cli_report_prints_where_the_report_is(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    assert cli.main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert str(run / "report.md") in out and "figures/front_3d.png" in out


def one_line_error(capsys, argv, *fragments):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_cli_errors_on_a_missing_or_invalid_run_directory(finished, tmp_path, capsys):
    one_line_error(capsys, ["report", str(tmp_path / "nowhere")], "nowhere", "no such run directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, ["report", str(empty)], "not a run directory", "config.json")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    one_line_error(capsys, ["report", str(a_file)], "not a directory")

    unfinished = copy_run(finished, tmp_path, "unfinished")
    (unfinished / "summary.json").unlink()
    one_line_error(capsys, ["report", str(unfinished)], "has not finished", "summary.json", "--resume")

    corrupt = copy_run(finished, tmp_path, "corrupt")
    (corrupt / "config.json").write_text("{ not json")
    one_line_error(capsys, ["report", str(corrupt)], "config.json", "not valid JSON")
    assert not (corrupt / "report.md").exists()


def test_other_features_need_a_matching_features_file(finished, digits, tmp_path, capsys):
    run = copy_run(finished, tmp_path, "renamed")
    recorded = json.loads((run / "config.json").read_text())
    recorded["features"]["name"] = "rps"
    (run / "config.json").write_text(json.dumps(recorded))
    one_line_error(capsys, ["report", str(run)], "'rps'", "cannot be rebuilt", "--features FILE")
    digits_file = digits.save(tmp_path / "digits.npz")
    one_line_error(capsys, ["report", str(run), "--features", str(digits_file)], "'rps'", "'digits'")
    one_line_error(capsys, ["report", str(run), "--features", str(tmp_path / "missing.npz")], "missing.npz")


def test_features_file_must_reproduce_the_run(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path, "with-file")
    right = embedded.digits().save(tmp_path / "right.npz")
    assert cli.main(["report", str(run), "--features", str(right)]) == 0
    capsys.readouterr()
    wrong = embedded.digits(seed=7).save(tmp_path / "wrong.npz")  # same name and sizes, other split
    one_line_error(capsys, ["report", str(run), "--features", str(wrong)], "do not reproduce the run")


def test_feature_frequency_plot_for_images_and_for_general_features():
    rng = np.random.default_rng(0)
    image = report.plot_feature_frequency(rng.random((5, 64)) < 0.5, image_side=8)
    assert len(image.axes) == 3  # image, colour bar, sorted bars
    general = report.plot_feature_frequency(rng.random((7, 2048)) < 0.3)
    assert len(general.axes) == 1
    # A side that does not match D draws no image.
    assert len(report.plot_feature_frequency(rng.random((5, 60)) < 0.5, image_side=8).axes) == 1


def test_ensemble_plot_skips_empty_bands(finished, digits):
    result, _ = finished
    comparison = ensemble.compare_ensembles(result, digits, bands=[(0, 100), (50, 100)])
    empty = dataclasses.replace(
        comparison.bands[1], band=(41, 42), class_members=(), ood_members=(),
        **{name: float("nan") for name in ("majority_vote_accuracy", "soft_vote_accuracy",
                                           "best_member_accuracy", "mean_score_auroc", "vote_auroc",
                                           "best_member_auroc")},
    )
    comparison = dataclasses.replace(comparison, bands=(*comparison.bands, empty))
    figure = report.plot_ensembles(comparison)
    for axes in figure.axes:
        labels = [tick.get_text().split("\n")[0] for tick in axes.get_xticklabels()]
        assert labels == ["0-100", "50-100"]
    assert "| 41-42 | 0 | - |" in comparison.table()
    assert comparison.to_dict()["bands"][2]["majority_vote_accuracy"] is None


def test_report_again_keeps_the_grad_cam_section_once(finished, digits, tmp_path):
    from evojax_prune.analysis.report import EXPLAIN_END as SECTION_END
    from evojax_prune.analysis.report import EXPLAIN_START as SECTION_START
    from evojax_prune.analysis.report import write_report

    run = copy_run(finished, tmp_path)
    report = write_report(run, digits)
    section = f"{SECTION_START}\n## Grad-CAM\n![g](explain/gradcam_00.png)\n{SECTION_END}\n"
    report.write_text(report.read_text() + "\n" + section)
    write_report(run, digits)
    text = report.read_text()
    assert text.count(SECTION_START) == 1 and "explain/gradcam_00.png" in text
    assert text.index("## Grad-CAM") > text.index("figures/front_pairs.png")


@pytest.fixture(scope="module")
def mahalanobis_run(digits, tmp_path_factory):
    """A finished run whose robustness objective is the Mahalanobis score's AUROC."""
    out = tmp_path_factory.mktemp("runs") / "mahalanobis"
    run_search(digits, tiny_config().replace(ood={"score": "mahalanobis"}), seed=0, out_dir=out)
    return out


def test_a_run_names_its_ood_score_in_pareto_csv_summary_and_report(mahalanobis_run):
    with open(mahalanobis_run / "pareto.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert rows and {row["ood_score"] for row in rows} == {"mahalanobis"}
    summary = json.loads((mahalanobis_run / "summary.json").read_text())
    assert summary["ood_score"] == "mahalanobis" and "Mahalanobis" in summary["ood_score_description"]
    # The ensembles recompute every member's Mahalanobis AUROC and check it against the run's.
    assert cli.main(["report", str(mahalanobis_run)]) == 0
    text = (mahalanobis_run / "report.md").read_text()
    assert "| val Mahalanobis AUROC | test Mahalanobis AUROC |" in text
    assert "of the OoD score Mahalanobis (class means and tied covariance" in text
    assert "AUROC of the mean Mahalanobis score" in text and "ODIN score" not in text


def test_a_run_from_before_the_ood_score_choice_still_reads_and_reports_odin(finished, tmp_path):
    old = copy_run(finished, tmp_path, "old")
    # What an earlier version wrote: no ood_score column, summary field or config field.
    with open(old / "pareto.csv") as stream:
        rows = list(csv.reader(stream))
    column = rows[0].index("ood_score")
    (old / "pareto.csv").write_text("".join(",".join(row[:column] + row[column + 1:]) + "\n" for row in rows))
    summary = json.loads((old / "summary.json").read_text())
    del summary["ood_score"], summary["ood_score_description"]
    (old / "summary.json").write_text(json.dumps(summary))
    recorded = json.loads((old / "config.json").read_text())
    recorded["config"]["odin"] = recorded["config"].pop("ood")  # the section's name before it was "ood"
    for name in ("score", "energy_temperature"):
        del recorded["config"]["odin"][name]
    (old / "config.json").write_text(json.dumps(recorded))
    loaded, _ = search_result.read_run(old)
    assert loaded.config.ood.score == "odin"
    report.write_report(old)
    assert "| val ODIN AUROC | test ODIN AUROC |" in (old / "report.md").read_text()


def test_an_ood_score_column_that_contradicts_the_config_is_damage(finished, tmp_path):
    copy = copy_run(finished, tmp_path)
    table = (copy / "pareto.csv").read_text()
    (copy / "pareto.csv").write_text(table.replace(",odin,", ",energy,"))
    with pytest.raises(rundir.RunFileError, match=r"pareto.csv: its ood_score column says \['energy'\]"):
        search_result.read_run(copy)


def test_the_best_line_names_each_metrics_own_member(tiny_run):
    """Issue 32: the line named one "best member" for the best accuracy and the best AUROC, which
    two different members held."""
    from evojax_prune.analysis.report import best_on_test

    result, out = tiny_run
    best = best_on_test(result)
    assert best["accuracy"] == (int(np.argmax(result.test["accuracy"])), result.test["accuracy"].max())
    assert best["auroc"] == (int(np.argmax(result.test["auroc"])), result.test["auroc"].max())
    text = report.render_markdown(result, *_recorded_and_comparison(result, out))
    line = next(line for line in text.splitlines() if line.startswith("- Best on test"))
    assert f"accuracy **{best['accuracy'][1]:.4f}** (member {best['accuracy'][0]})" in line, line
    assert f"AUROC **{best['auroc'][1]:.4f}** (member {best['auroc'][0]})" in line, line


def _recorded_and_comparison(result, out):
    from evojax_prune.data import embedded

    recorded = json.loads((out / "config.json").read_text())
    return recorded, ensemble.compare_ensembles(result, embedded.digits())


def test_legends_never_cover_the_baseline_and_the_3d_front_and_heat_maps_have_colour_scales(tiny_run):
    result, _ = tiny_run
    for figure in (report.plot_front_pairs(result), report.plot_front_3d(result)):
        figure.canvas.draw()
        legends = figure.legends + [legend for axes in figure.axes if (legend := axes.get_legend())]
        assert len(legends) == 1
        box = legends[0].get_window_extent()
        for axes in figure.axes:
            if axes.get_label() == "<colorbar>":
                continue
            assert not box.overlaps(axes.get_window_extent()), "the legend lies over an axes"
    figure = report.plot_front_3d(result)
    assert [axes.get_ylabel() for axes in figure.axes if axes.get_label() == "<colorbar>"] == \
        ["accuracy (validation)"]
    masks = np.random.default_rng(0).random((5, 64)) < 0.5
    figure = report.plot_feature_frequency(masks, image_side=8)
    colorbars = [axes for axes in figure.axes if axes.get_label() == "<colorbar>"]
    assert [axes.get_ylabel() for axes in colorbars] == ["fraction of members keeping it"]
