"""The ``evojax-prune`` command.

Exit codes: 0 success; 2 a usage or input error (one line on stderr naming the
problem); 1 an internal error (set ``EVOJAX_PRUNE_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence

from evojax_prune.config import FRONT_SOURCES, OOD_SCORES
from evojax_prune.version import __version__

PROG = "evojax-prune"
# Commands that compile XLA programs, and so keep them on disk between runs (compile_cache.py).
COMPILING_COMMANDS = frozenset({"run", "extract", "report", "explain"})


class UsageError(Exception):
    """A problem with what the user asked for; reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (and exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _inspect(args: argparse.Namespace) -> int:
    from evojax_prune.data import embedded
    from evojax_prune.data.featureset import FeatureSet

    featureset = FeatureSet.load(args.features) if args.features else embedded.digits()
    print(featureset)
    problem = featureset.search_problem(args.features)
    if problem:  # a valid file all the same: inspect shows it, run refuses it
        warnings.warn(f"{problem}; 'evojax-prune run' refuses it", UserWarning, stacklevel=1)
    return 0


@contextlib.contextmanager
def _flag(name: str, value: object):
    """A configuration error that flag ``name`` caused, in the one-line form naming the flag.

    The checks themselves are the configuration's (config.py, ``RunControls``,
    ``strategy.check_mask_bounds``): the command only says which flag broke one.
    """
    try:
        yield
    except ValueError as error:
        raise UsageError(f"{name} {value}: {error}") from None


# Flags that set one configuration field each: (flag, attribute of args, section, field).
CONFIG_FLAGS = (
    ("--population", "population", "search", "population_size"),
    ("--generations", "generations", "search", "generations"),
    ("--selection", "selection", "search", "selection"),
    ("--front", "front", "search", "front"),
    ("--max-features", "max_features", "search", "max_features"),
    ("--hidden-layers", "hidden_layers", "head", "hidden_layers"),
    ("--prune", "prune", "head", "prune"),
)


def _configured(args: argparse.Namespace, config):
    """``config`` with the fields the flags set, each flag's error naming it."""
    for flag, attribute, section, field in CONFIG_FLAGS:
        value = getattr(args, attribute)
        if value is not None:
            with _flag(flag, value):
                config = config.replace(**{section: {field: value}}, preset=config.preset)
    if args.devices is not None:
        with _flag("--devices", args.devices):
            config = config.replace(engine={"devices": args.devices}, preset=config.preset)
    ood = _ood_settings(args, config.ood.score)
    with _flag("--ood-temperature" if args.ood_temperature is not None else "--ood-score",
               args.ood_temperature if args.ood_temperature is not None else ood["score"]):
        return config.replace(ood=ood, preset=config.preset)


def _run_controls(args: argparse.Namespace, on_generation):
    from evojax_prune.search.controls import RunControls

    with _flag("--time-budget", args.time_budget):
        RunControls(time_budget=args.time_budget)
    with _flag("--hv-patience", args.hv_patience):
        return RunControls(time_budget=args.time_budget, hv_patience=args.hv_patience,
                           on_generation=on_generation)


def _resumed_run(args: argparse.Namespace):
    """``resume.RecordedRun`` of --out, every flag that says what the run is checked against it.

    ``--resume`` takes the run's settings from its config.json; a flag that is
    also given must agree, else it is refused naming the setting, the run's
    value and the flag's. The engine (--devices) and the run controls may change.
    """
    from evojax_prune.search import resume

    run = resume.read_recorded(args.out)
    recorded = run.config
    where = f"the run in {args.out} was started with"
    remedy = "--resume continues it with its own settings (config.json): drop the flag, or start a new run"
    for flag, given, theirs in (("--preset", args.preset, recorded.preset), ("--seed", args.seed, run.seed),
                                ("--runs", args.runs, run.runs)):
        if given is not None and given != theirs:
            raise UsageError(f"{flag} {given}: {where} {flag[2:]} {theirs}; {remedy}")
    for flag, attribute, section, field in CONFIG_FLAGS:
        value = getattr(args, attribute)
        if value is None:
            continue
        with _flag(flag, value):
            asked = recorded.replace(**{section: {field: value}}, preset=recorded.preset)
        if asked != recorded:
            theirs = getattr(getattr(recorded, section), field)
            raise UsageError(f"{flag} {value}: {where} {section}.{field} = {theirs!r}; {remedy}")
    if args.ood_score is not None or args.ood_temperature is not None:
        ood = _ood_settings(args, recorded.ood.score)
        flag = "--ood-temperature" if args.ood_temperature is not None else "--ood-score"
        value = args.ood_temperature if args.ood_temperature is not None else ood["score"]
        with _flag(flag, value):
            asked = recorded.replace(ood=ood, preset=recorded.preset)
        if asked != recorded:
            theirs = {name: getattr(recorded.ood, name) for name in ood}
            raise UsageError(f"{flag} {value}: {where} ood {theirs}; {remedy}")
    return run


def _run(args: argparse.Namespace) -> int:
    from datetime import datetime
    from pathlib import Path

    from evojax_prune.config import preset
    from evojax_prune.data import embedded
    from evojax_prune.data.featureset import FeatureSet
    from evojax_prune.search import loop, resume, strategy, warm_start

    # Everything is checked before anything is computed or written.
    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR, the run directory to continue")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    _run_controls(args, None)
    recorded_run = _resumed_run(args) if args.resume else None
    if recorded_run is not None:
        seed, runs, config = recorded_run.seed, recorded_run.runs, recorded_run.config
        preset_name = config.preset
        if args.devices is not None:
            with _flag("--devices", args.devices):
                config = config.replace(engine={"devices": args.devices}, preset=config.preset)
    else:
        seed, runs = (0 if args.seed is None else args.seed), (1 if args.runs is None else args.runs)
        with _flag("--runs", runs):
            loop.check_runs(runs)
        with _flag("--seed", seed):
            loop.check_seed(seed, runs, name="the seed" if runs == 1 else "the seeds")
        # The embedded digits are a CPU demo: they default to the quick preset.
        preset_name = args.preset or ("default" if args.features else "quick")
        config = _configured(args, preset(preset_name))

    from evojax_prune import devices

    if args.coordinator_address is not None:
        try:
            devices.check_coordinator_address(args.coordinator_address, "--coordinator-address")
        except ValueError as error:
            raise UsageError(str(error)) from None
    # Before any other JAX call: several processes (flags, EVOJAX_PRUNE_* or a cluster launcher).
    devices.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                                   detect=args.distributed)
    devices.select_devices(config.engine.devices)  # devices that are not there: exit 2 before any work
    main_process = devices.is_main_process()
    given = [FeatureSet.load(path) for path in args.features] if args.features else None
    if recorded_run is not None:  # the run's data: the files given, or the embedded digits rebuilt
        searched = resume.recorded_features(recorded_run, given)
        folds = searched if isinstance(searched, list) else [searched]
    else:
        folds = given or [embedded.digits()]
    for fold, path in zip(folds, args.features or [None] * len(folds), strict=True):
        fold.check_searchable(path)  # one class: refused naming the file
    if len(folds) > 1 and runs > 1:
        raise UsageError(f"--runs {runs} with {len(folds)} folds (--features): run the folds' search "
                         "once per seed")
    features = folds[0]  # the folds agree on D and C (run_search checks)
    length = config.head.chromosome_length(features.num_features)  # D, or the neurons pruned
    with _flag("--max-features", args.max_features):
        strategy.check_mask_bounds(config.search, length)
    if args.initial_masks is not None:  # InitialMasksError: exit 2
        warm_start.read_initial_masks(args.initial_masks, length)
    out = Path(args.out) if args.out else Path("runs") / (
        f"{features.name}-{preset_name}-seed{seed}-{datetime.now():%Y%m%d-%H%M%S}"
    )

    from rich.console import Console

    from evojax_prune.search.progress import SearchProgress, front_table, runs_table

    console = Console(stderr=True, quiet=args.quiet or not main_process)  # one voice: process 0
    console.print(
        f"evojax-prune run: {features}"
        + (f" and {len(folds) - 1} more folds, objectives averaged over them" if len(folds) > 1 else "")
        + f"\npreset {preset_name}: population {config.search.population_size}, "
        f"{config.search.generations} generations of {config.search.num_offspring} offspring "
        f"(up to {config.search.max_evaluations} evaluations), "
        f"{_seeds(seed, runs)}, output {out}" + (" (resumed)" if args.resume else "") + "\n"
        f"head: {config.head.hidden_layers} hidden layer(s) of {config.head.hidden}, pruning "
        f"{config.head.prune}; objectives on the {config.search.selection} split",
        highlight=False,
    )
    protocol = features.metadata.get("protocol")
    if config.preset == "paper" and protocol not in (None, "paper"):
        console.print(f"note: {features.name} was extracted with the {protocol!r} protocol; the authors' OoD "
                      "images and resizing are `evojax-prune extract --protocol paper`", highlight=False)
    searched = folds if len(folds) > 1 else features
    with SearchProgress(config.search.generations, console, runs=runs) as progress:
        controls = _run_controls(args, progress.update)
        if recorded_run is not None:  # as from Python: the run's settings, this session's controls
            engine = None if args.devices is None else {"devices": args.devices}
            resumed = resume.resume_searches if runs > 1 else resume.resume_search
            result = resumed(out, searched, controls=controls, engine=engine,
                             initial_masks=args.initial_masks)
        else:
            options = dict(seed=seed, out_dir=out, overwrite=args.overwrite, controls=controls,
                           initial_masks=args.initial_masks)
            if runs > 1:
                result = loop.run_searches(features, config, runs=runs, **options)
            else:
                result = loop.run_search(searched, config, **options)
    if runs > 1:
        console.print(runs_table(result))
        console.print(f"{result}\nresults in {out} (run-0 .. run-{runs - 1}, runs.json, "
                      "merged_pareto.csv)", highlight=False)
        return 0
    console.print(front_table(result))
    console.print(f"{result}\nresults in {out}", highlight=False)
    ended = result.stopping or {}
    if ended.get("reason", "generations") != "generations":
        console.print(f"stopped after generation {ended['generation']} of {ended['planned_generations']} "
                      f"({ended['reason'].replace('_', ' ')}); --resume continues it",
                      highlight=False)
    return 0


def _seeds(seed: int, runs: int) -> str:
    return f"seed {seed}" if runs == 1 else f"{runs} runs, seeds {seed} .. {seed + runs - 1}"


# The config field each score's temperature is, for --ood-temperature; the other scores have none.
OOD_TEMPERATURE_FIELDS = {"odin": "temperature", "energy": "energy_temperature"}


def _ood_settings(args: argparse.Namespace, preset_score: str) -> dict:
    """The ood section's fields --ood-score and --ood-temperature ask for (UsageError if they clash)."""
    score = args.ood_score or preset_score
    fields = {"score": score}
    if args.ood_temperature is not None:
        if score not in OOD_TEMPERATURE_FIELDS:
            raise UsageError(f"--ood-temperature: the {score!r} score has no temperature (only "
                             f"{' and '.join(OOD_TEMPERATURE_FIELDS)} have one)")
        fields[OOD_TEMPERATURE_FIELDS[score]] = args.ood_temperature
    return fields


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Multi-objective evolutionary pruning of transfer-learning heads (MO-EvoPruneDeepTL) in JAX."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    inspect = commands.add_parser("inspect", help="validate a FeatureSet file and print its summary")
    inspect.add_argument("features", nargs="?", help="FeatureSet .npz (default: the embedded digits)")
    inspect.set_defaults(handler=_inspect)

    run = commands.add_parser("run", help="run the evolutionary search")
    run.add_argument("--features", metavar="FILE", nargs="+",
                     help="FeatureSet .npz (default: the embedded digits); several: one per cross-validation "
                          "fold, a mask's objectives the mean over them (the authors' SRSMAS and LEAVES)")
    run.add_argument("--preset", choices=["paper", "default", "quick"],
                     help="configuration preset (default: quick on the embedded digits, else default)")
    run.add_argument("--population", type=int, metavar="N", help="population size")
    run.add_argument("--generations", type=int, metavar="G", help="generations after the initial one")
    run.add_argument("--seed", type=int, metavar="S", help="seed (default 0; --resume: the run's)")
    run.add_argument("--selection", choices=["validation", "test"],
                     help="the split the objectives are measured on (default: the preset's; paper: test, "
                          "as the authors, who had no validation split)")
    run.add_argument("--front", choices=list(FRONT_SOURCES),
                     help="where the reported front comes from: every mask evaluated (archive; every "
                          "preset but paper) or the final population (population; paper, as jMetalPy)")
    run.add_argument("--runs", type=int, metavar="R",
                     help="R independent searches, seeds S .. S+R-1, trained together in lockstep; "
                          "--out holds run-0 .. run-{R-1} and their merged front (default 1)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/NAME-PRESET-seedS-TIME)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run (or group of runs) in --out from its checkpoint, with the "
                          "settings it was started with (config.json); only --devices, --features, the "
                          "stopping controls and --quiet may be given anew")
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    pruned = run.add_argument_group("the head and what it prunes (README: 'Pruning targets')")
    pruned.add_argument("--hidden-layers", type=int, choices=[1, 2],
                        help="hidden layers of the head: 1 (D -> 512 -> C, the default) or 2 "
                             "(D -> 512 -> 512 -> C)")
    pruned.add_argument("--prune", choices=["features", "hidden1", "hidden2", "both"],
                        help="what a chromosome bit removes: an input feature (default), a neuron of the "
                             "first or second hidden layer, or of both (hidden2 and both need "
                             "--hidden-layers 2)")
    ood = run.add_argument_group(
        "robustness objective", "the AUROC of an OoD score, InD vs OoD (README: 'OoD scores')"
    )
    ood.add_argument("--ood-score", choices=OOD_SCORES,
                     help="the OoD score: odin (default; max softmax of logits / T), msp, maxlogit, energy, "
                          "mahalanobis (last hidden layer, fitted on the training split)")
    ood.add_argument("--ood-temperature", type=float, metavar="T",
                     help="the score's temperature: ODIN's T (preset: 1000) or the energy's (default 1)")
    several = run.add_argument_group(
        "devices and hosts",
        "the population is split over every device JAX sees; several hosts run one process each "
        "(README: 'Several devices and hosts')",
    )
    several.add_argument("--devices", metavar="SPEC",
                         help="'all' (default), a count N (the first N devices of each process) or "
                              "positions such as 0,2")
    several.add_argument("--distributed", action="store_true",
                         help="several processes as JAX detects them (TPU pod slices, SLURM, Open MPI)")
    several.add_argument("--coordinator-address", metavar="HOST:PORT",
                         help="process 0's address (or EVOJAX_PRUNE_COORDINATOR); SLURM, Open MPI and "
                              "TPU pod launches are detected without it")
    several.add_argument("--num-processes", type=int, metavar="N",
                         help="processes in the run (or EVOJAX_PRUNE_NUM_PROCESSES)")
    several.add_argument("--process-id", type=int, metavar="I",
                         help="this process, 0 .. N-1 (or EVOJAX_PRUNE_PROCESS_ID)")
    stop = run.add_argument_group(
        "stopping and warm starts",
        "stop before the planned generations (a stopped run is resumable: --resume with a larger "
        "budget or none continues it), bound the masks, seed the first population (README: "
        "'Stopping early, bounding the masks, warm starts')",
    )
    stop.add_argument("--time-budget", type=float, metavar="SECONDS",
                      help="stop after the first generation that ends past SECONDS of run time "
                           "(a resumed run counts its earlier time)")
    stop.add_argument("--hv-patience", type=int, metavar="G",
                      help="stop when the front's hypervolume has not improved for G generations")
    stop.add_argument("--max-features", type=int, metavar="K",
                      help="a mask keeps at most K features (masks above are repaired at random); "
                           "part of the configuration")
    stop.add_argument("--initial-masks", metavar="FILE",
                      help="seed the first population: a .npy (K, D) bool/0-1 array, an earlier run's "
                           "pareto.npz or its run directory (the first population-size masks)")
    run.set_defaults(handler=_run)

    # Commands whose arguments live beside their code: the module's
    # ``register(parser)`` adds them and sets ``handler`` (keep it cheap: import
    # heavy libraries inside the handler).
    for name, summary, module in (
        ("extract", "compute a FeatureSet from images", "evojax_prune.data.extract"),
        ("report", "plots and a report for a finished run", "evojax_prune.analysis.report_command"),
        ("explain", "Grad-CAM heat maps of front members", "evojax_prune.analysis.explain"),
        ("export", "a front member's head as a Keras model file", "evojax_prune.run.search_result"),
    ):
        importlib.import_module(module).register(commands.add_parser(name, help=summary))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 with argparse's one-line message on bad usage
    return dispatch(args)


def dispatch(args: argparse.Namespace) -> int:
    """Runs ``args.handler``: the exit status, errors as one line on stderr (2: the input, 1: a bug)."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if args.command in COMPILING_COMMANDS:
                from evojax_prune.io import compile_cache

                compile_cache.enable()
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, OSError) as error:  # OSError: a file cannot be read or written
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # an internal error: a bug, not the user's fault
        if os.environ.get("EVOJAX_PRUNE_DEBUG"):
            traceback.print_exc()
        print(
            f"{PROG}: internal error: {type(error).__name__}: {_one_line(error)} "
            "(set EVOJAX_PRUNE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


# The library's messages name Python arguments (``resume=True``); the command names its flags.
AS_FLAGS = (
    (r"\bresume=True\b", "--resume"),
    (r"\boverwrite=True\b", "--overwrite"),
    (r"\bwith resume=False\b", "without --resume"),
    (r"\bresume_search\('([^']*)'\)", r"'evojax-prune run --out \1 --resume'"),
    (r"\bresume_searches\('([^']*)'\)", r"'evojax-prune run --out \1 --resume'"),
    (r"\bwithout initial_masks=", "without --initial-masks"),
    (r"\binitial_masks=", "--initial-masks "),
    (r"\bfeatures=\[FOLD, \.\.\.\]", "--features FOLD ..."),
    (r"\bfeatures=", "--features "),
    (r"\bwith_backbone=True\b", "--with-backbone"),
    (r"\bbackbone_weights=", "--backbone-weights "),
    # explain_run's and extract_featureset's arguments
    (r"\bmembers='([^']*)'", r"--members \1"),
    (r"\bnum_images=", "--images "),
    (r"\btop=", "--top "),
    (r"\btarget='([^']*)'", r"--target \1"),
    (r"\bsplit='([^']*)'", r"--split \1"),
    (r"\bfolder=", "--folder "),
    (r"\btfds=", "--tfds "),
    (r"\bweights=", "--weights "),
    (r"\bood=\[NAME_OR_PATH\]", "--ood NAME_OR_PATH"),
    (r"\bprotocol='([^']*)'", r"--protocol \1"),
    (r"\bimage_size=", "--image-size "),
)


def as_flags(text: str) -> str:
    """A library message as the command says it: each Python argument named by its flag."""
    for pattern, flag in AS_FLAGS:
        text = re.sub(pattern, flag, text)
    return text


def _one_line(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, OSError) and error.strerror:  # without the "[Errno N]" prefix
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return as_flags(" ".join(text.split())) or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr, as the errors are (no source location: not a bug)."""
    print(f"{PROG}: warning: {as_flags(' '.join(str(message).split()))}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
