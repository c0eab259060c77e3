"""Every head shape and pruning target from the command line, on the embedded digits."""

import json

import numpy as np
import pytest

from evojax_prune.cli import main as cli
from evojax_prune.config import HeadConfig
from evojax_prune.run import search_result

TINY = ["--population", "2", "--generations", "1", "--quiet"]


@pytest.mark.parametrize(
    ("layers", "prune", "bits"),
    # The default head ("1", "features") runs in every other CLI test; ("2", "hidden2") below.
    # ("2", "hidden1") trains in tests/test_trainer.py against the sequential reference.
    [("1", "hidden1", 512), ("2", "features", 64), ("2", "both", 1024)],
)
def test_each_mode_trains_scores_and_reads_back(tmp_path, layers, prune, bits):
    out = tmp_path / "run"
    assert cli.main(["run", "--hidden-layers", layers, "--prune", prune, "--out", str(out), *TINY]) == 0
    result, _ = search_result.read_run(out)
    assert result.config.head == HeadConfig(hidden=512, hidden_layers=int(layers), prune=prune)
    assert result.masks.shape[1] == bits
    np.testing.assert_allclose(result.validation["mem"], result.masks.sum(axis=1) / bits)
    assert (result.params.second_kernel is None) == (layers == "1")
    assert np.all(result.validation["accuracy"] > 0.5)  # the heads learned the digits
    summary = json.loads((out / "summary.json").read_text())
    assert summary["front"]["size"] == len(result.masks)


def test_a_neuron_run_reports_and_refuses_explain(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "--hidden-layers", "2", "--prune", "hidden2", "--out", str(out), *TINY]) == 0
    assert cli.main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "pruning second-layer neurons" in report and "| head | second-layer neurons |" in report
    # Neurons everywhere (issue 32): the baseline, the frequency paragraph, the figures' labels.
    assert "baseline (all second-layer neurons)" in report and "all features" not in report
    assert "How often each of the 512 second-layer neurons is kept" in report
    from evojax_prune.analysis import report as report_module
    from evojax_prune.run.search_result import SearchResult

    result = SearchResult.load(out)
    figure = report_module.plot_front_pairs(result)
    labels = [axes.get_xlabel() for axes in figure.axes]
    labels += [text.get_text() for text in figure.legends[0].texts]
    assert "MEM (fraction of second-layer neurons kept)  (lower is better)" in labels, labels
    assert "baseline (all second-layer neurons)" in labels
    assert not any("features" in label for label in labels), labels
    capsys.readouterr()
    assert cli.main(["explain", str(out)]) == 2
    error = capsys.readouterr().err
    assert "prune neurons (HeadConfig.prune 'hidden2')" in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--prune", "hidden2"], "HeadConfig.prune 'hidden2' needs hidden_layers = 2, got 1"),
        (["--prune", "both"], "HeadConfig.prune 'both' needs hidden_layers = 2, got 1"),
        (["--prune", "neurons"], "argument --prune: invalid choice: 'neurons'"),
        (["--hidden-layers", "3"], "argument --hidden-layers: invalid choice: 3"),
        (["--prune", "hidden1", "--max-features", "600"],
         "--max-features 600: search.max_features = 600 exceeds the chromosome's 512 bits"),
    ],
)
def test_bad_head_flags_exit_2_and_write_nothing(tmp_path, capsys, arguments, message):
    out = tmp_path / "run"
    try:
        status = cli.main(["run", *arguments, "--out", str(out), "--quiet"])
    except SystemExit as usage_error:  # argparse's own errors
        status = usage_error.code
    assert status == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not out.exists()
