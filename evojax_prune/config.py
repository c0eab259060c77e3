"""Run configuration: one frozen object, validated on construction, JSON round trip.

The configuration is split the way the method is: the head (the network being
pruned), its training, the search (NSGA-II), the robustness objective (an OoD score),
and apart from them the engine: how the heads are trained on the hardware,
which changes no result. Every dataclass is frozen and hashable, so a config
can be a static argument of a jitted function.

Presets:
  * ``paper``: every setting the authors ran (docs/PROTOCOL.md), as Keras 2.2.4
    ran it: population 30, steady state with 2 offspring, 200 evaluations,
    objectives on the test split (no validation split), SGD 1e-3 / momentum
    0.9 / Nesterov with decay 1e-6, batch 32, Keras' clipped cross-entropy,
    up to 600 epochs, early stopping (1e-5, patience 10) restoring the best
    weights only when it stops a head, the same initial weights and data
    order for a mask in every run, ODIN at T = 1000 without perturbation, the
    authors' threshold AUROC.
  * ``default``: the paper's training protocol with a generational population
    sized for an accelerator, objectives on a validation split, the exact
    AUROC and today's Keras semantics (README: "The paper preset and the
    default").
  * ``quick``: seconds on a laptop CPU, for demos and tests.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from typing import Any, Literal, get_args

# optax constructors accepted by ``TrainConfig.optimizer``; each takes the
# learning rate as its first argument.
OPTIMIZERS = (
    "sgd", "adam", "adamw", "nadam", "nadamw", "rmsprop", "adagrad", "adabelief",
    "lamb", "lion", "novograd", "radam", "yogi", "lars", "adafactor", "adamax",
    "adamaxw", "amsgrad", "adadelta", "fromage", "sm3", "noisy_sgd", "sign_sgd",
    "adan", "rprop",
)
# The modes, each a Literal type listed once; the tuples of their values are read off the types.
AurocKind = Literal["exact", "paper"]
# OoD scores of ``OodConfig.score`` (score/ood_scores.py); the first is the default.
OodScore = Literal["odin", "msp", "maxlogit", "energy", "mahalanobis"]
Strategy = Literal["nsga2"]
Selection = Literal["validation", "test"]
# Which masks the reported front is drawn from (``SearchConfig.front``).
FrontSource = Literal["archive", "population"]
# What one bit of a chromosome keeps or removes (``HeadConfig.prune``).
PruneTarget = Literal["features", "hidden1", "hidden2", "both"]
Step = Literal["xla", "fused_sgd"]
TileSum = Literal["gather", "scatter"]
KernelLayout = Literal["kept_by_hidden", "hidden_by_kept"]

AUROC_KINDS: tuple[AurocKind, ...] = get_args(AurocKind)
OOD_SCORES: tuple[OodScore, ...] = get_args(OodScore)
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
SELECTIONS: tuple[Selection, ...] = get_args(Selection)
FRONT_SOURCES: tuple[FrontSource, ...] = get_args(FrontSource)
PRUNE_TARGETS: tuple[PruneTarget, ...] = get_args(PruneTarget)
STEPS: tuple[Step, ...] = get_args(Step)
TILE_SUMS: tuple[TileSum, ...] = get_args(TileSum)
KERNEL_LAYOUTS: tuple[KernelLayout, ...] = get_args(KernelLayout)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _positive_int(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value >= low,
        f"{owner}.{name} must be an integer >= {low}, got {value!r}",
    )


def _probability(owner: str, name: str, value: Any) -> None:
    _check(
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0,
        f"{owner}.{name} must be a probability in [0, 1], got {value!r}",
    )


def _positive_float(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """A finite number > 0 (or >= 0): inf and NaN are refused, as no head trains or scores with them."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0.0 if allow_zero else value > 0.0)
    ok = ok and (isinstance(value, int) or math.isfinite(value))  # a huge int is finite, not a float
    bound = ">= 0" if allow_zero else "> 0"
    _check(ok, f"{owner}.{name} must be a finite number {bound}, got {value!r}")


def canonical_devices(spec: Any) -> int | tuple[int, ...] | None:
    """A device spec in its canonical, hashable form: None, a count, or a tuple of positions.

    None, ``"all"`` and ``""`` mean every device; an int or ``"4"`` the first n
    devices; a sequence of ints or ``"0,2"`` those positions in each process's
    list of local devices (``devices.select_devices`` resolves them).
    """
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool)):
        _check(spec is None or spec >= 1, f"devices: a device count must be at least 1, got {spec}")
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in ("", "all"):
            return None
        parts = [part.strip() for part in text.split(",") if part.strip()]
        _check(
            bool(parts) and all(part.isdigit() for part in parts),
            f"devices: expected 'all', a count such as '2' or device positions such as '0,2', got {spec!r}",
        )
        numbers = [int(part) for part in parts]
        return canonical_devices(numbers[0] if "," not in text else numbers)
    _check(isinstance(spec, (list, tuple)),
           f"devices: expected None, a count or device positions, got {spec!r}")
    positions = tuple(spec)
    _check(
        bool(positions) and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in positions),
        f"devices: positions must be non-negative integers, got {list(positions)}",
    )
    _check(len(set(positions)) == len(positions),
           f"devices: positions must be distinct, got {list(positions)}")
    return positions


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The pruned head and what its chromosome prunes (``head.py``).

    The head is D features -> ``hidden_layers`` dense ReLU layers of
    ``hidden`` units (no bias) -> C logits (bias): the authors' 2048 -> 512 ->
    C (MO-EvoPruneDeepTL) or 2048 -> 512 -> 512 -> C (EvoPruneDeepTL). The
    predecessor's first dense layer had a bias (Keras' default); here no hidden
    layer has one, so that pruning a neuron removes all of its connections.

    Attributes:
      hidden: units per hidden layer.
      hidden_layers: 1 or 2.
      prune: what one bit of the chromosome keeps or removes, with every
        connection of its unit: ``"features"`` (D bits, the input features:
        MO-EvoPruneDeepTL's feature selection), ``"hidden1"`` or ``"hidden2"``
        (``hidden`` bits, the neurons of the first or second hidden layer:
        EvoPruneDeepTL's FC1 / FC2 pruning), ``"both"`` (2 * ``hidden`` bits,
        the neurons of both hidden layers, first layer's first). MEM is the
        fraction of the chromosome kept.
    """

    hidden: int = 512
    hidden_layers: int = 1
    prune: PruneTarget = "features"

    def __post_init__(self):
        _positive_int("HeadConfig", "hidden", self.hidden)
        _check(self.hidden_layers in (1, 2) and not isinstance(self.hidden_layers, bool),
               f"HeadConfig.hidden_layers must be 1 or 2, got {self.hidden_layers!r}")
        _check(self.prune in PRUNE_TARGETS,
               f"HeadConfig.prune must be one of {PRUNE_TARGETS}, got {self.prune!r}")
        _check(self.prune in ("features", "hidden1") or self.hidden_layers == 2,
               f"HeadConfig.prune {self.prune!r} needs hidden_layers = 2, got {self.hidden_layers}")

    def chromosome_length(self, num_features: int) -> int:
        """Bits of a mask: D for features, ``hidden`` per pruned hidden layer."""
        return {"features": num_features, "both": 2 * self.hidden}.get(self.prune, self.hidden)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How every head is trained (the authors' protocol by default).

    Attributes:
      optimizer: name of an optax optimizer constructor (see ``OPTIMIZERS``).
      learning_rate: its learning rate.
      momentum, nesterov: used by ``sgd`` (and ``rmsprop``'s momentum).
      optimizer_options: extra keyword arguments for the optax constructor, as
        ``(name, value)`` pairs so the config stays hashable.
      batch_size: minibatch size; the last partial batch is used, not dropped.
      max_epochs: epoch limit.
      patience, min_delta: early stopping on the epoch's training loss; a head
        stops after ``patience`` epochs without an improvement of more than
        ``min_delta`` and, with ``restore_best``, gets its best weights back.
      restore_at_max_epochs: with ``restore_best``, a head that reaches
        ``max_epochs`` without stopping gets its best weights back too (Keras
        >= 2.3 and 3). False: only a head that early stopping stopped does, the
        others keep their last weights (Keras 2.2.4, the authors' version:
        keras-team/keras#12511).
      lr_decay: Keras' SGD ``decay``: the learning rate at a head's step t
        (0-based) is ``learning_rate / (1 + lr_decay * t)``, applied in Keras'
        own form of the momentum update (``train/keras_sgd.py``); the authors
        ran 1e-6. 0: ``optax.sgd``. Only with ``optimizer="sgd"``.
      probability_epsilon: Keras' categorical cross-entropy clips the softmax
        probabilities to [eps, 1 - eps] before the log, so a sample whose
        right class is predicted beyond them stops giving a gradient (Keras
        2.2.4: 1e-7). 0: the exact cross-entropy on the logits.
      training_seed: None: each run's seed gives its heads their initial
        weights and minibatch order. An integer: every run trains from this
        seed's instead (the seed a run of that seed would use), so a mask gets
        the same head in every run, as the authors' seed reset before each
        fitness call gave (docs/PROTOCOL.md).

    How the heads are trained on the hardware (chunks, devices, kernels) is
    ``EngineConfig``: it changes no result beyond float32 reassociation.
    """

    optimizer: str = "sgd"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = True
    optimizer_options: tuple[tuple[str, Any], ...] = ()
    batch_size: int = 32
    max_epochs: int = 600
    patience: int = 10
    min_delta: float = 1e-5
    restore_best: bool = True
    restore_at_max_epochs: bool = True
    lr_decay: float = 0.0
    probability_epsilon: float = 0.0
    training_seed: int | None = None

    def __post_init__(self):
        _check(
            self.optimizer in OPTIMIZERS,
            f"TrainConfig.optimizer: unknown optimizer {self.optimizer!r}; "
            f"expected one of {', '.join(OPTIMIZERS)}",
        )
        _positive_float("TrainConfig", "learning_rate", self.learning_rate)
        _probability("TrainConfig", "momentum", self.momentum)
        _check(isinstance(self.nesterov, bool), f"TrainConfig.nesterov must be a bool, got {self.nesterov!r}")
        options = tuple(tuple(pair) for pair in self.optimizer_options)
        _check(
            all(len(pair) == 2 and isinstance(pair[0], str) for pair in options),
            "TrainConfig.optimizer_options must be (name, value) pairs, "
            f"got {self.optimizer_options!r}",
        )
        object.__setattr__(self, "optimizer_options", options)
        _positive_int("TrainConfig", "batch_size", self.batch_size)
        _positive_int("TrainConfig", "max_epochs", self.max_epochs)
        _positive_int("TrainConfig", "patience", self.patience)
        _positive_float("TrainConfig", "min_delta", self.min_delta, allow_zero=True)
        _check(isinstance(self.restore_best, bool), "TrainConfig.restore_best must be a bool")
        _check(isinstance(self.restore_at_max_epochs, bool),
               "TrainConfig.restore_at_max_epochs must be a bool")
        _positive_float("TrainConfig", "lr_decay", self.lr_decay, allow_zero=True)
        _check(self.lr_decay == 0 or self.optimizer == "sgd",
               f"TrainConfig.lr_decay (Keras' SGD decay) needs optimizer 'sgd', got {self.optimizer!r}; "
               "other optimizers take a schedule through optimizer_options")
        epsilon = self.probability_epsilon
        _check(isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool) and 0.0 <= epsilon < 0.5,
               f"TrainConfig.probability_epsilon must be a number in [0, 0.5), got {epsilon!r}")
        if self.training_seed is not None:
            _positive_int("TrainConfig", "training_seed", self.training_seed, allow_zero=True)


AUTO = "auto"


def _auto_or(owner: str, name: str, value: Any, check, expected: str) -> None:
    _check(value == AUTO or check(value), f"{owner}.{name} must be 'auto' or {expected}, got {value!r}")


def _is_count(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How the heads are trained and scored on the hardware, never what they learn.

    Every field may be ``"auto"``: ``trainer.train_population`` resolves the
    section once, for the platform of the devices it trains on, into a
    ``plan.TrainingPlan`` (``plan.make_plan``), the static argument of the
    jitted program, recorded in the run's config.json. Changing a field
    changes results at most by float32 reassociation, so a run may resume
    with another engine (on other hardware).

    Attributes:
      devices: where the population trains and is scored, split over the
        devices on its leading axis (``devices.py``): None for every device
        JAX sees, n for the first n, or positions such as ``(0, 2)``.
      chunk_size: heads trained at once (batched inside a chunk, chunks one
        after another); auto: 1 on a CPU, else from ``memory_budget_mb`` and
        ``max_heads_per_chunk`` (``plan.choose_chunk_size``).
      memory_budget_mb: device memory the trainer (and the scoring) may use
        for per-head state, per device.
      max_heads_per_chunk: the most heads an automatically sized chunk holds.
      gather_features: train each head on the units it keeps only (its kept
        features, or with ``HeadConfig.prune`` its kept neurons), not on the
        masked full-width layers; auto: when the optimizer allows it
        (``plan.ROW_SEPARABLE_OPTIMIZERS``), True with another optimizer is an
        error.
      step: the training step of packed chunks (several heads per chunk):
        ``"xla"`` or ``"fused_sgd"`` (``fused_sgd.sgd_step``, one Pallas
        kernel for the first layer's gradient, SGD update and next forward
        product; plain ``sgd`` only, Pallas' interpreter off a GPU). Auto:
        fused_sgd on a GPU where Triton compiles the shapes, else xla. Chunks
        of one head always train with xla.
      tile_sum: how a packed chunk sums each head's tiles: ``"gather"`` (a
        fixed order) or ``"scatter"`` (``segment_sum``; atomics on a GPU, in
        no fixed order); auto: gather on a GPU, scatter elsewhere.
      capacity_levels: how finely a head's kept rows are padded: multiples of
        D / levels; auto: 16 for chunks of one head, 8 for packed chunks (which
        size their tiles from them).
      kernel_layout: how a chunk of one head stores its first kernel while it
        trains, ``"kept_by_hidden"`` (c, H) or ``"hidden_by_kept"`` (H, c);
        auto: (H, c) on a CPU, (c, H) elsewhere. Packed chunks store (c, H).
      command_buffers: let XLA run a GPU's loop bodies as CUDA graphs; auto:
        for chunks of one head only (launch-bound; larger chunks exhausted
        memory instantiating them). Other platforms ignore it.
    """

    devices: int | tuple[int, ...] | None = None
    chunk_size: int | str = AUTO
    memory_budget_mb: float = 2048.0
    max_heads_per_chunk: int = 32
    gather_features: bool | str = AUTO
    step: Step | Literal["auto"] = AUTO
    tile_sum: TileSum | Literal["auto"] = AUTO
    capacity_levels: int | str = AUTO
    kernel_layout: KernelLayout | Literal["auto"] = AUTO
    command_buffers: bool | str = AUTO

    def __post_init__(self):
        owner = "EngineConfig"
        try:
            object.__setattr__(self, "devices", canonical_devices(self.devices))
        except ValueError as error:
            raise ValueError(f"{owner}.{error}") from None
        _auto_or(owner, "chunk_size", self.chunk_size, _is_count, "an integer >= 1")
        _positive_float(owner, "memory_budget_mb", self.memory_budget_mb)
        _positive_int(owner, "max_heads_per_chunk", self.max_heads_per_chunk)
        is_bool = lambda value: isinstance(value, bool)
        _auto_or(owner, "gather_features", self.gather_features, is_bool, "true or false")
        _auto_or(owner, "step", self.step, STEPS.__contains__, f"one of {STEPS}")
        _auto_or(owner, "tile_sum", self.tile_sum, TILE_SUMS.__contains__, f"one of {TILE_SUMS}")
        _auto_or(owner, "capacity_levels", self.capacity_levels, _is_count, "an integer >= 1")
        _auto_or(owner, "kernel_layout", self.kernel_layout, KERNEL_LAYOUTS.__contains__,
                 f"one of {KERNEL_LAYOUTS}")
        _auto_or(owner, "command_buffers", self.command_buffers, is_bool, "true or false")


@dataclasses.dataclass(frozen=True)
class OodConfig:
    """The robustness objective: an OoD score (ODIN by default) and the AUROC that ranks it.

    ``RunConfig.ood``. The config.json of earlier runs names the section
    ``odin`` and may have no ``score`` (they load as ODIN): both still read.

    Attributes:
      score: the OoD score whose AUROC is the objective (``OOD_SCORES``,
        ``score/ood_scores.py``): ``"odin"`` (max softmax of logits / T),
        ``"msp"`` (max softmax, T = 1), ``"maxlogit"``, ``"energy"``
        (T log sum exp(logits / T) at ``energy_temperature``) or
        ``"mahalanobis"`` (on the head's last hidden layer, fitted on the
        training split).
      temperature: ODIN's softmax temperature T (the authors: 1000); used by
        ``"odin"`` only.
      energy_temperature: the energy score's temperature (Liu et al.: 1);
        used by ``"energy"`` only.
      epsilon: ODIN's input-perturbation step in feature space; 0 (off) as in
        the paper. A variant: the original ODIN perturbs pixels. Only with
        ``score="odin"``.
      auroc: ``"exact"`` (Mann-Whitney, ties half) or ``"paper"`` (the
        authors' 100-threshold trapezoid) as the optimised objective.
    """

    temperature: float = 1000.0
    epsilon: float = 0.0
    auroc: AurocKind = "exact"
    score: OodScore = "odin"
    energy_temperature: float = 1.0

    def __post_init__(self):
        _check(
            self.score in OOD_SCORES,
            f"OodConfig.score: unknown OoD score {self.score!r}; expected one of {', '.join(OOD_SCORES)}",
        )
        _positive_float("OodConfig", "temperature", self.temperature)
        _positive_float("OodConfig", "energy_temperature", self.energy_temperature)
        _positive_float("OodConfig", "epsilon", self.epsilon, allow_zero=True)
        # ODIN's perturbation ascends ODIN's own score; no other score defines it here.
        _check(
            self.epsilon == 0 or self.score == "odin",
            f"OodConfig.epsilon = {self.epsilon!r} (ODIN's input perturbation) needs score 'odin', "
            f"got score {self.score!r}",
        )
        _check(
            self.auroc in AUROC_KINDS,
            f"OodConfig.auroc must be one of {AUROC_KINDS}, got {self.auroc!r}",
        )


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """NSGA-II over feature masks.

    Attributes:
      population_size: parents kept each generation.
      offspring_size: children per generation; ``None`` means equal to the
        population (generational); the authors used 2 (steady state).
      generations: generations after the initial population. Evaluations in
        total: ``population_size + generations * offspring``.
      crossover_rate: probability that a pair is recombined (uniform crossover).
      swap_rate: per-gene swap probability inside uniform crossover.
      mutation_rate: per-bit flip probability; ``None`` means 1 / D.
      min_active: fewest features a mask may keep (0 allows the empty mask).
      max_features: most features a mask may keep (None: no limit); masks
        above are repaired inside the jitted ask and initial population
        (``operators.repair_max_active``). It changes which masks are searched,
        so it is configuration: resume compares it. Between ``min_active`` and
        D (D is checked by ``run_search``).
      strategy: the search algorithm.
      selection: the split the objectives are measured on.
        ``"validation"``: the validation split and the OoD validation set;
        the test split stays unseen until the final front is reported.
        ``"test"`` (the authors', who had no validation split): the test
        split and the OoD test set, with the heads trained on the whole
        train split (a validation split held out of it returns to training;
        ``search.selection``). The front is then tuned on the data it is
        reported on.
      front: where the front comes from. ``"archive"``: the non-dominated
        set of every mask evaluated so far (the evaluation cache holds their
        objectives), so the front and its hypervolume never lose a member and
        never fall from one generation to the next. ``"population"``: the
        non-dominated members of the current population, as jMetalPy's NSGA-II
        returns them (the authors' official code; the paper preset): a member
        a later generation drops is lost and the hypervolume can fall.

    How long a search runs (a time budget, a hypervolume patience) is not
    here but ``search.controls.RunControls``: it does not change what a
    generation computes, so a run may be resumed with another.
    """

    population_size: int = 30
    offspring_size: int | None = None
    generations: int = 10
    crossover_rate: float = 1.0
    swap_rate: float = 0.5
    mutation_rate: float | None = None
    min_active: int = 1
    strategy: Strategy = "nsga2"
    max_features: int | None = None
    selection: Selection = "validation"
    front: FrontSource = "archive"

    def __post_init__(self):
        _positive_int("SearchConfig", "population_size", self.population_size)
        _check(
            self.population_size >= 2,
            f"SearchConfig.population_size must be at least 2, got {self.population_size}",
        )
        if self.offspring_size is not None:
            _positive_int("SearchConfig", "offspring_size", self.offspring_size)
        _positive_int("SearchConfig", "generations", self.generations)
        _probability("SearchConfig", "crossover_rate", self.crossover_rate)
        _probability("SearchConfig", "swap_rate", self.swap_rate)
        if self.mutation_rate is not None:
            _probability("SearchConfig", "mutation_rate", self.mutation_rate)
        _positive_int("SearchConfig", "min_active", self.min_active, allow_zero=True)
        if self.max_features is not None:
            _positive_int("SearchConfig", "max_features", self.max_features)
            _check(
                self.max_features >= self.min_active,
                f"SearchConfig.max_features = {self.max_features} is below min_active = {self.min_active}: "
                f"a mask must keep between min_active and max_features features",
            )
        _check(
            self.strategy in STRATEGIES,
            f"SearchConfig.strategy must be one of {STRATEGIES}, got {self.strategy!r}",
        )
        _check(
            self.selection in SELECTIONS,
            f"SearchConfig.selection must be one of {SELECTIONS}, got {self.selection!r}",
        )
        _check(
            self.front in FRONT_SOURCES,
            f"SearchConfig.front must be one of {FRONT_SOURCES}, got {self.front!r}",
        )

    @property
    def num_offspring(self) -> int:
        return self.population_size if self.offspring_size is None else self.offspring_size

    @property
    def max_evaluations(self) -> int:
        return self.population_size + self.generations * self.num_offspring


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, in one object."""

    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    ood: OodConfig = dataclasses.field(default_factory=OodConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    preset: str = "custom"

    def __post_init__(self):
        for name, kind in _SECTIONS.items():
            _check(
                isinstance(getattr(self, name), kind),
                f"RunConfig.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}",
            )

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with fields changed per section, e.g. ``replace(search={"generations": 5})``."""
        changes = {}
        for name, fields in _current_section_names(sections, "RunConfig.replace").items():
            if name == "preset":
                changes[name] = fields
                continue
            _check(
                name in _SECTIONS,
                f"RunConfig has no section {name!r}; expected one of {tuple(_SECTIONS)}",
            )
            changes[name] = _replace_checked(getattr(self, name), fields)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        _check(isinstance(data, dict), f"a RunConfig must be a JSON object, got {type(data).__name__}")
        data = _current_section_names(data, "RunConfig")
        unknown = set(data) - set(_SECTIONS) - {"preset"}
        _check(not unknown, _unknown_names("RunConfig", "section", unknown, (*_SECTIONS, "preset")))
        data = _moved_to_engine(data)
        sections = {}
        for name, kind in _SECTIONS.items():
            fields = data.get(name, {})
            _check(isinstance(fields, dict), f"RunConfig.{name} must be a JSON object")
            sections[name] = _build_checked(kind, fields)
        return cls(**sections, preset=data.get("preset", "custom"))

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config is not valid JSON: {error}") from None
        return cls.from_dict(data)


_SECTIONS = {
    "head": HeadConfig, "train": TrainConfig, "search": SearchConfig, "ood": OodConfig,
    "engine": EngineConfig,
}
# Sections under the names of earlier versions: the OoD section was "odin" before it held other scores.
_FORMER_SECTION_NAMES = {"odin": "ood"}


def _current_section_names(sections: dict[str, Any], owner: str) -> dict[str, Any]:
    """``sections`` with every former section name replaced by the current one."""
    renamed = dict(sections)
    for former, current in _FORMER_SECTION_NAMES.items():
        if former in renamed:
            _check(current not in renamed,
                   f"{owner}: sections {former!r} and {current!r} are the same section; give one")
            renamed[current] = renamed.pop(former)
    return renamed
# Fields that were TrainConfig's before EngineConfig held them (config.json of older runs).
_FORMER_TRAIN_FIELDS = ("chunk_size", "memory_budget_mb", "devices", "fused_update")


def _moved_to_engine(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict whose ``train`` still holds engine fields, with them moved to ``engine``.

    ``train.fused_update`` true / false / null becomes ``engine.step``
    fused_sgd / xla / auto, a null chunk size auto.
    """
    train = data.get("train")
    if not isinstance(train, dict) or not set(_FORMER_TRAIN_FIELDS) & set(train):
        return data
    engine = dict(data.get("engine", {})) if isinstance(data.get("engine", {}), dict) else data["engine"]
    train = dict(train)
    for name in _FORMER_TRAIN_FIELDS:
        if name not in train or not isinstance(engine, dict):
            continue
        value = train.pop(name)
        if name == "fused_update":
            name, value = "step", {True: "fused_sgd", False: "xla"}.get(value, AUTO)
        elif name == "chunk_size" and value is None:
            value = AUTO
        engine.setdefault(name, value)
    return {**data, "train": train, "engine": engine}


def _unknown_names(owner: str, what: str, unknown: set[str], valid) -> str:
    """``Owner: unknown field(s) [...]``, with the nearest valid name of each where one is close."""
    hints = []
    for name in sorted(unknown):
        nearest = difflib.get_close_matches(name, sorted(valid), n=1)
        if nearest:
            hints.append(f"{name!r}: did you mean {nearest[0]!r}?")
    message = f"{owner}: unknown {what}(s) {sorted(unknown)}"
    return message + (f" ({'; '.join(hints)})" if hints else f"; expected one of {sorted(valid)}")


def _field_names(kind) -> set[str]:
    return {field.name for field in dataclasses.fields(kind)}


def _build_checked(kind, fields: dict[str, Any]):
    unknown = set(fields) - _field_names(kind)
    _check(not unknown, _unknown_names(kind.__name__, "field", unknown, _field_names(kind)))
    fields = dict(fields)
    if kind is TrainConfig and "optimizer_options" in fields:
        fields["optimizer_options"] = tuple(tuple(pair) for pair in fields["optimizer_options"])
    return kind(**fields)


def _replace_checked(section, fields: dict[str, Any]):
    unknown = set(fields) - _field_names(type(section))
    moved = sorted(unknown & set(_FORMER_TRAIN_FIELDS)) if isinstance(section, TrainConfig) else []
    _check(not moved, f"TrainConfig: {moved} moved to the engine section: replace(engine={{...}})")
    _check(not unknown, _unknown_names(type(section).__name__, "field", unknown, _field_names(type(section))))
    return dataclasses.replace(section, **fields)


# Keras 2.2.4's semantics where they differ from ours (TrainConfig), as the authors ran them.
PAPER_TRAINING = dict(restore_at_max_epochs=False, lr_decay=1e-6, probability_epsilon=1e-7, training_seed=0)


def _paper() -> RunConfig:
    return RunConfig(
        head=HeadConfig(hidden=512),
        train=TrainConfig(**PAPER_TRAINING),
        # 30 + 85 generations x 2 offspring = 200 evaluations, as the authors ran, selected on test.
        search=SearchConfig(population_size=30, offspring_size=2, generations=85, selection="test",
                            front="population"),
        ood=OodConfig(temperature=1000.0, epsilon=0.0, auroc="paper"),
        preset="paper",
    )


def _default() -> RunConfig:
    return RunConfig(
        head=HeadConfig(hidden=512),
        train=TrainConfig(),
        search=SearchConfig(population_size=256, offspring_size=None, generations=20),
        ood=OodConfig(),
        preset="default",
    )


def _quick() -> RunConfig:
    # The paper's head, trained briefly with a larger step: on the embedded digits
    # a run takes a couple of minutes on a 2-core CPU, most of it compiling.
    return RunConfig(
        head=HeadConfig(hidden=512),
        train=TrainConfig(optimizer="sgd", learning_rate=0.05, max_epochs=30, patience=5, batch_size=64),
        search=SearchConfig(population_size=32, generations=12),
        ood=OodConfig(),
        preset="quick",
    )


PRESETS = {"paper": _paper, "default": _default, "quick": _quick}


def preset(name: str) -> RunConfig:
    """The named configuration: ``paper``, ``default`` or ``quick``."""
    _check(name in PRESETS, f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]()
