import pytest

from cnnlab.config import (
    DEFAULT_RECIPE,
    RunConfig,
    apply_overrides,
    config_from_dict,
    load_recipe,
    parse_set,
    recipe_names,
)
from cnnlab.errors import ConfigError


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_loads_and_validates(name):
    cfg = load_recipe(name)
    assert cfg.name == name
    cfg.validate()


def test_default_recipe_is_fashion_mnist():
    assert DEFAULT_RECIPE in recipe_names()
    assert load_recipe(None).data.name == "fashion-mnist"


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(load_recipe(None), {"train.epochs": 7, "model.kwargs.widths": [8, 16]})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_recipe(str(path))
    assert (
        again == cfg
        and again.train.epochs == 7
        and again.model.kwargs == {"pool_grid": 3, "strided_first": True, "widths": [8, 16]}
    )


def test_parse_set_reads_yaml_scalars():
    values = parse_set(["train.epochs=3", "optim.lr=1e-3", "data.download=false", "data.root=/x"])
    cfg = apply_overrides(RunConfig(), values)
    assert (cfg.train.epochs, cfg.optim.lr, cfg.data.download, cfg.data.root) == (3, 1e-3, False, "/x")


def test_int_is_accepted_where_a_float_is_wanted():
    assert apply_overrides(RunConfig(), {"optim.lr": 1}).optim.lr == 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.epoch": 3}, "unknown key 'train.epoch'"),
        ({"nope.x": 3}, "unknown key 'nope.x'"),
        ({"train.epochs": "three"}, "train.epochs must be int"),
        ({"train.compile": "yes"}, "must be true or false"),
        ({"optim.lr": True}, "must be a number"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), overrides)


@pytest.mark.parametrize(
    "key, value",
    [
        ("train.epochs", 0),
        ("optim.lr", -1.0),
        ("train.label_smoothing", 1.0),
        ("train.precision", "fp8"),
        ("train.channels_last", "yes"),
    ],
)
def test_validate_rejects_bad_values(key, value):
    with pytest.raises(ConfigError, match=key):
        apply_overrides(RunConfig(), {key: value}).validate()


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["train.epochs"])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match=DEFAULT_RECIPE):
        load_recipe("no-such-recipe")


def test_recipe_with_unknown_top_level_key(tmp_path):
    (tmp_path / "r.yaml").write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'epochs' at the top"):
        load_recipe(str(tmp_path / "r.yaml"))


def test_recipe_that_is_not_yaml(tmp_path):
    (tmp_path / "r.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(tmp_path / "r.yaml"))


def test_nested_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="train"):
        config_from_dict({"train": 3})


def test_another_model_drops_the_recipes_model_kwargs():
    base = apply_overrides(load_recipe(None), {"model.kwargs.widths": [8, 16]})
    assert base.model.kwargs == {"pool_grid": 3, "strided_first": True, "widths": [8, 16]}
    assert apply_overrides(base, {"model.name": "uw-lab"}).model.kwargs == {}
    assert apply_overrides(base, {"model.name": "uw-lab", "model.kwargs.act": "gelu"}).model.kwargs == {"act": "gelu"}
    assert (
        apply_overrides(base, {"model.name": "fastnet"}).model.kwargs == base.model.kwargs
    )  # the same model keeps them
