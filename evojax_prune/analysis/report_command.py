"""``evojax-prune report RUN_DIR``: one run's report (``report.py``) or a group's (``group_report.py``).

The command lives apart from both so that neither imports the other's caller:
the group report draws with the run report's figures.
"""

from __future__ import annotations

import argparse
import json

from evojax_prune.analysis import group_report, published, report
from evojax_prune.run import search_result


def register(subparser: argparse.ArgumentParser) -> None:
    """Adds ``evojax-prune report RUN_DIR [--features FILE] [--compare-published NAME]``
    (``RUN_DIR`` a group of runs: ``group_report.py``)."""
    subparser.add_argument("run_dir", metavar="RUN_DIR",
                           help="a finished run directory, or a group of runs (run --runs R): the merged "
                                "front, the runs' hypervolumes and a line per run")
    subparser.add_argument(
        "--features", metavar="FILE",
        help="the FeatureSet .npz the run used (not needed for the embedded digits)",
    )
    subparser.add_argument(
        "--compare-published", metavar="NAME",
        help="also set the run's front beside the authors' published front of this data set: "
             f"{', '.join(published.PUBLISHED_DATASETS)} (any case)",
    )
    subparser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    name = args.compare_published
    if name is not None:
        name = published.dataset_name(name)  # a bad name: exit 2 before anything is read or written
    if group_report.is_group(args.run_dir):
        if name is not None or args.features is not None:
            raise ValueError(f"{args.run_dir}: a group of runs; --features and --compare-published are for "
                             "one run's report (evojax-prune report GROUP_DIR/run-<i>)")
        path = group_report.write_group_report(args.run_dir)
        print(f"report: {path}")
        print(f"figures: {', '.join(f'figures/{figure}.png' for figure in group_report.FIGURES)}")
        return 0
    path = report.write_report(args.run_dir, args.features, compare_published=name)
    figures = report.FIGURES + ((report.PUBLISHED_FIGURE,) if name is not None else ())
    print(f"report: {path}")
    print(f"figures: {', '.join(f'figures/{figure}.png' for figure in figures)}")
    best = report.best_on_test(search_result.SearchResult.load(path.parent))
    print(f"best on test: accuracy {best['accuracy'][1]:.4f} (member {best['accuracy'][0]}), AUROC "
          f"{best['auroc'][1]:.4f} (member {best['auroc'][0]})")
    if name is not None:
        against = json.loads((path.parent / "published.json").read_text())
        print(f"hypervolume beside the authors' {published.label(name)} front: this run (test) "
              f"{against['ours']['hypervolume']:.4f}, theirs {against['published']['hypervolume']:.4f} "
              f"(paper: {against['published']['published_hypervolume']:.4f})")
    return 0
