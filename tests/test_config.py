import dataclasses

import pytest

from evojax_prune import config as cfg


@pytest.mark.parametrize("name", sorted(cfg.PRESETS))
def test_presets_round_trip_through_json(name):
    run = cfg.preset(name)
    assert run.preset == name
    assert cfg.RunConfig.from_json(run.to_json()) == run


def test_paper_preset_is_the_authors_protocol():
    run = cfg.preset("paper")
    assert run.head.hidden == 512
    train = run.train
    assert (train.optimizer, train.learning_rate, train.momentum, train.nesterov) == ("sgd", 1e-3, 0.9, True)
    assert (train.batch_size, train.max_epochs, train.patience, train.min_delta) == (32, 600, 10, 1e-5)
    assert train.restore_best
    search = run.search
    assert (search.population_size, search.num_offspring, search.max_evaluations) == (30, 2, 200)
    assert (search.crossover_rate, search.swap_rate, search.mutation_rate) == (1.0, 0.5, None)
    assert (run.ood.temperature, run.ood.epsilon, run.ood.auroc) == (1000.0, 0.0, "paper")


def test_default_preset_is_generational():
    search = cfg.preset("default").search
    assert search.num_offspring == search.population_size
    assert search.max_evaluations == search.population_size * (search.generations + 1)


def test_configs_are_hashable_so_they_can_be_static_jit_arguments():
    assert hash(cfg.preset("quick")) == hash(cfg.preset("quick"))
    options = cfg.TrainConfig(optimizer="adam", optimizer_options=[["b1", 0.8]])
    assert options.optimizer_options == (("b1", 0.8),)
    hash(options)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: cfg.SearchConfig(population_size=-4), "population_size"),
        (lambda: cfg.SearchConfig(population_size=0), "population_size"),
        (lambda: cfg.SearchConfig(generations=0), "generations"),
        (lambda: cfg.SearchConfig(crossover_rate=1.5), "crossover_rate"),
        (lambda: cfg.SearchConfig(mutation_rate=-0.1), "mutation_rate"),
        (lambda: cfg.SearchConfig(swap_rate=2), "swap_rate"),
        (lambda: cfg.SearchConfig(strategy="cmaes"), "strategy"),
        (lambda: cfg.TrainConfig(optimizer="adamz"), "unknown optimizer 'adamz'"),
        (lambda: cfg.TrainConfig(learning_rate=0), "learning_rate"),
        (lambda: cfg.TrainConfig(momentum=1.2), "momentum"),
        (lambda: cfg.TrainConfig(batch_size=0), "batch_size"),
        (lambda: cfg.TrainConfig(max_epochs=2.5), "max_epochs"),
        (lambda: cfg.TrainConfig(min_delta=-1.0), "min_delta"),
        (lambda: cfg.EngineConfig(chunk_size=0), "chunk_size"),
        (lambda: cfg.EngineConfig(capacity_levels=1.5), "capacity_levels"),
        (lambda: cfg.EngineConfig(kernel_layout="rows"), "kernel_layout"),
        (lambda: cfg.EngineConfig(command_buffers="yes"), "command_buffers"),
        (lambda: cfg.EngineConfig(gather_features=None), "gather_features"),
        (lambda: cfg.preset("quick").replace(train={"chunk_size": 4}), r"moved to the engine section"),
        (lambda: cfg.HeadConfig(hidden=0), "hidden"),
        (lambda: cfg.OodConfig(temperature=0.0), "temperature"),
        (lambda: cfg.OodConfig(auroc="fuzzy"), "auroc"),
        (lambda: cfg.OodConfig(score="gram"),
         r"unknown OoD score 'gram'; expected one of odin, msp, maxlogit, energy, mahalanobis"),
        (lambda: cfg.OodConfig(score="energy", energy_temperature=0.0), "energy_temperature"),
        (lambda: cfg.OodConfig(score="msp", epsilon=0.01), r"epsilon .* needs score 'odin'"),
        (lambda: cfg.preset("tiny"), "unknown preset 'tiny'"),
    ],
)
def test_invalid_settings_raise_a_value_error_naming_the_setting(build, message):
    with pytest.raises(ValueError, match=message):
        build()


NON_FINITE_FLOATS = [
    (cfg.TrainConfig, "learning_rate"), (cfg.TrainConfig, "min_delta"), (cfg.TrainConfig, "lr_decay"),
    (cfg.EngineConfig, "memory_budget_mb"), (cfg.OodConfig, "temperature"),
    (cfg.OodConfig, "energy_temperature"), (cfg.OodConfig, "epsilon"),
]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize(("section", "field"), NON_FINITE_FLOATS,
                         ids=[f"{section.__name__}.{field}" for section, field in NON_FINITE_FLOATS])
def test_a_non_finite_float_is_refused_naming_the_field(section, field, value):
    """Issue 33 (9): a learning rate of inf was accepted; every float bounded below must be finite too."""
    with pytest.raises(ValueError, match=rf"{section.__name__}\.{field} must be a finite number"):
        section(**{field: value})


def test_from_json_rejects_unknown_fields_and_bad_json():
    with pytest.raises(ValueError, match="unknown field"):
        cfg.RunConfig.from_dict({"search": {"populaton_size": 8}})
    with pytest.raises(ValueError, match="unknown section"):
        cfg.RunConfig.from_dict({"serach": {}})
    with pytest.raises(ValueError, match="not valid JSON"):
        cfg.RunConfig.from_json("{")


def test_replace_changes_one_field_and_validates():
    run = cfg.preset("paper").replace(search={"population_size": 64})
    assert run.search.population_size == 64
    assert run.search.num_offspring == 2
    assert run.train == cfg.preset("paper").train
    with pytest.raises(ValueError, match="population_size"):
        run.replace(search={"population_size": 0})
    with pytest.raises(ValueError, match="unknown field"):
        run.replace(train={"epochs": 3})


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.preset("quick").search.population_size = 3


def test_ood_score_settings_round_trip_and_old_configs_load_as_odin():
    run = cfg.preset("quick").replace(ood={"score": "energy", "energy_temperature": 2.5})
    assert cfg.RunConfig.from_json(run.to_json()) == run
    assert hash(run) != hash(cfg.preset("quick"))
    # config.json of a run from before the choice: no score, no energy temperature.
    # and its OoD section under the name it had then, "odin".
    old = cfg.preset("paper").to_dict()
    del old["ood"]
    old["odin"] = {"temperature": 1000.0, "epsilon": 0.0, "auroc": "paper"}
    loaded = cfg.RunConfig.from_dict(old)
    assert (loaded.ood.score, loaded.ood.energy_temperature) == ("odin", 1.0)
    assert loaded == cfg.preset("paper")
    assert "odin" not in loaded.to_dict() and loaded.to_dict()["ood"]["auroc"] == "paper"
    assert cfg.preset("paper").replace(odin={"score": "msp"}).ood.score == "msp"  # scripts of then
    with pytest.raises(ValueError, match="'odin' and 'ood' are the same section"):
        cfg.RunConfig.from_dict({**old, "ood": {}})


def test_an_unknown_field_or_section_names_the_nearest_valid_one():
    with pytest.raises(ValueError, match=r"\['populaton_size'\] .*did you mean 'population_size'"):
        cfg.preset("quick").replace(search={"populaton_size": 3})
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['serch'\] .*did you mean 'search'"):
        cfg.RunConfig.from_dict({"serch": {}})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['zzz'\]; expected one of"):
        cfg.RunConfig.from_dict({"train": {"zzz": 1}})


def test_every_config_class_is_exported_and_every_pruning_target_has_a_unit_name():
    import evojax_prune as ep
    from evojax_prune import head

    for kind in (cfg.RunConfig, cfg.HeadConfig, cfg.TrainConfig, cfg.SearchConfig, cfg.OodConfig,
                 cfg.EngineConfig):
        assert getattr(ep, kind.__name__) is kind and kind.__name__ in ep.__all__
    assert tuple(head.UNIT_NAMES) == cfg.PRUNE_TARGETS
