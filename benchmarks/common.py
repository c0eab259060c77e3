"""What every benchmark records beside its numbers: device, versions, date, load."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import resource
import threading

import jax
import numpy as np

from evojax_prune import devices
from evojax_prune.config import EngineConfig, RunConfig, preset
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.io import atomic
from evojax_prune.run import rundir
from evojax_prune.train import trainer

# How the benchmarks train (``EngineConfig`` fields): gpu.sh sets $EVOJAX_PRUNE_BENCH_ENGINE to
# the fastest variant's of step_profile.py (a JSON object, e.g. {"tile_sum": "gather"}), so that
# the suite that follows measures the trainer as it runs fastest on that device. Every
# benchmark that trains applies it (``with_engine``) and records it (``environment``).
ENGINE_VARIABLE = "EVOJAX_PRUNE_BENCH_ENGINE"


def engine_settings(text: str | None = None) -> dict:
    """The ``EngineConfig`` fields of the JSON object ``text`` (default: $EVOJAX_PRUNE_BENCH_ENGINE).

    Unset or empty: no settings, ``{}``. Raises ValueError naming the variable
    for text that is not a JSON object of valid ``EngineConfig`` fields.
    """
    text = os.environ.get(ENGINE_VARIABLE, "") if text is None else text
    if not text.strip():
        return {}
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"${ENGINE_VARIABLE} is not valid JSON ({error}): {text!r}") from None
    fields = [field.name for field in dataclasses.fields(EngineConfig)]
    if not isinstance(settings, dict):
        raise ValueError(f"${ENGINE_VARIABLE} must be a JSON object of EngineConfig fields {fields}, "
                         f"got {text!r}")
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"${ENGINE_VARIABLE}: unknown EngineConfig field(s) {unknown}; expected some of "
                         f"{fields}, got {text!r}")
    try:
        EngineConfig(**settings)
    except ValueError as error:
        raise ValueError(f"${ENGINE_VARIABLE}: {error}") from None
    return settings


# At import: a bad $EVOJAX_PRUNE_BENCH_ENGINE stops a benchmark before it measures anything.
engine_settings()


def paper_budget() -> RunConfig:
    """The paper preset's head, search and budget with the default's training semantics.

    The faithful preset trains as Keras 2.2.4 did (SGD decay, clipped loss, its restore
    rule, objectives on the test split); Keras' decay keeps the fused SGD step off GPUs.
    The engine benchmarks time the authors' budget, not those rules, so they train as
    before issue 22 and their results stay comparable with those recorded earlier.
    """
    return preset("paper").replace(train=dataclasses.asdict(preset("default").train),
                                   search={"selection": "validation"})


def with_engine(config: RunConfig, settings: dict | None = None) -> RunConfig:
    """``config`` with the engine settings of $EVOJAX_PRUNE_BENCH_ENGINE, then ``settings``, applied."""
    return config.replace(engine={**engine_settings(), **(settings or {})})


def plan_record(config: RunConfig, population: int, num_features: int, num_classes: int) -> dict:
    """How ``train_population`` trains ``population`` heads under ``config``: its resolved plan.

    The population is split over the devices of ``config.engine.devices`` as the
    trainer splits it; the plan is the one of each device's share
    (``trainer.training_plan``), JSON-ready.
    """
    mesh = devices.mesh_for(config.engine.devices)
    local = devices.padded_size(population, mesh.size) // mesh.size
    plan = trainer.training_plan(config, local, num_features, num_classes, mesh)
    return {"population": population, "devices": mesh.size, "population_per_device": local,
            **plan.to_dict()}


def environment(extra_packages: tuple[str, ...] = ()) -> dict:
    """The run directory's ``rundir.environment`` with the date, device, machine load and engine settings."""
    device = jax.devices()[0]
    return {
        **rundir.environment(extra_packages),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_kind": device.device_kind,
        "num_devices": jax.device_count(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "engine": engine_settings(),
    }


def save(out, report: dict) -> None:
    """Writes a benchmark's JSON atomically (creating its folder) and says where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out, report)
    print(f"wrote {out}")


class PeakMemory:
    """Peak resident set size of this process while the block runs (sampled every 5 ms)."""

    def __init__(self):
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * self._page
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self):
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            self._stop.wait(0.005)

    def __enter__(self):
        self.start_bytes = self.peak_bytes = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())


def host_memory_available_bytes() -> int | None:
    """What the kernel says a new allocation can get (``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def peak_memory() -> dict:
    """Peak host RSS and, where the device reports it, peak device memory (bytes)."""
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_peak_bytes": stats.get("peak_bytes_in_use"),
        "device_limit_bytes": stats.get("bytes_limit"),
    }


def rps_shaped_features(seed: int = 0, num_features: int = 2048) -> FeatureSet:
    """Synthetic features with the RPS data set's shapes (docs/PROTOCOL.md, "Datasets").

    RPS: 2,520 train / 372 test images, 3 classes; 20% of train is carved into
    validation (2,016 / 504); OoD sets as large as the test split (372 each).
    Values are non-negative like pooled ResNet-50 features; labels follow a
    linear rule so that heads learn something and early stopping behaves.
    """
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(num_features, 3))

    def split(count):
        x = rng.gamma(0.6, 0.8, size=(count, num_features)).astype(np.float32)
        y = np.argmax((x - x.mean()) @ weights + rng.normal(scale=2.0, size=(count, 3)), axis=1)
        return x, y.astype(np.int32)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(2016), split(504), split(372)
    ood = rng.gamma(0.9, 0.6, size=(744, num_features)).astype(np.float32)
    return FeatureSet(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        ood_val=ood[:372], ood_test=ood[372:], class_names=("rock", "paper", "scissors"),
        metadata={"name": "rps-shaped-synthetic"},
    )
