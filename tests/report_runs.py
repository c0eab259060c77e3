"""The tiny finished run the report tests share (``tiny_run`` in conftest.py) and a pristine copy of it."""

import shutil

from evojax_prune import config


def tiny_config():
    return config.preset("quick").replace(
        head={"hidden": 16}, train={"max_epochs": 6}, search={"population_size": 8, "generations": 2}
    )


def copy_run(finished, tmp_path, name="copy"):
    _, out = finished
    target = tmp_path / name
    # A pristine run: without what an earlier report may have added.
    shutil.copytree(out, target, ignore=shutil.ignore_patterns(
        "report.md", "ensembles.json", "published.json", "figures"))
    return target
