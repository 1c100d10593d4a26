"""The configuration: one source of defaults, the same settings through Flower and Hydra."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from fdkt_flwr.config import (
    ConfigError,
    FdktConfig,
    flatten,
    from_flat,
    pyproject_block,
    to_run_config,
)
from fdkt_flwr.hydra_config import compose

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_run_config() -> dict:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return flatten(data["tool"]["flwr"]["app"]["config"])


def test_pyproject_mirrors_the_schema_exactly():
    # If this fails: python -m fdkt_flwr.config --write-pyproject
    assert _pyproject_run_config() == to_run_config(FdktConfig())
    assert pyproject_block() in (ROOT / "pyproject.toml").read_text()


def test_required_run_config_keys_exist():
    keys = set(to_run_config(FdktConfig()))
    required = {"num-server-rounds", "seed", "output-dir", "dataset.name", "dataset.text-column",
                "dataset.label-column", "dataset.partitioner", "dataset.dirichlet-alpha",
                "dataset.private-size", "privacy.epsilon", "privacy.delta",
                "privacy.max-grad-norm", "generator.model", "llm.model", "slm.model"}
    assert required <= keys


def test_hydra_defaults_equal_flower_defaults():
    cfg, launch = compose()
    assert to_run_config(cfg) == _pyproject_run_config()
    assert launch["clients"] >= 2


@pytest.mark.parametrize(("hydra", "flower"), [
    ("privacy.epsilon=3", {"privacy.epsilon": 3.0}),
    ("dataset.private_size=64", {"dataset.private-size": 64}),
    ("dataset.partitioner=dirichlet", {"dataset.partitioner": "dirichlet"}),
    ("privacy.epsilon=inf", {"privacy.epsilon": math.inf}),
])
def test_same_override_means_the_same_through_hydra_and_flower(hydra, flower):
    via_hydra, _ = compose([hydra])
    via_flower = from_flat({**_pyproject_run_config(), **flower})
    assert to_run_config(via_hydra) == to_run_config(via_flower)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("privacy.epsilon", -1, "privacy.epsilon=-1.0: must be > 0 (or inf for non-private)"),
    ("privacy.epsilon", 0, "privacy.epsilon=0.0: must be > 0 (or inf for non-private)"),
    ("privacy.delta", 1.5, "privacy.delta=1.5: must be in (0, 1)"),
    ("privacy.max-grad-norm", 0, "privacy.max-grad-norm=0.0: must be > 0"),
    ("dataset.partitioner", "zipf", "dataset.partitioner='zipf': must be one of iid, dirichlet"),
    ("privacy.accountant", "gdp", "privacy.accountant='gdp': must be one of prv, rdp"),
    ("dataset.private-size", 1.5, "dataset.private-size=1.5: must be a int"),
    ("num-server-rounds", 0, "num-server-rounds=0: must be an integer >= 1"),
    ("output-dir", "relative/dir", "output-dir='relative/dir': must be an absolute path"),
])
def test_invalid_values_fail_with_one_line_naming_the_key(key, value, message):
    with pytest.raises(ConfigError) as err:
        from_flat({key: value})
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(message)


def test_unknown_key_is_an_error_not_a_silent_default():
    with pytest.raises(ConfigError, match=r"privacy\.epsilom: unknown setting"):
        from_flat({"privacy.epsilom": 3.0})


def test_underscore_and_hyphen_spellings_are_the_same_key():
    assert from_flat({"dataset.private_size": 7}) == from_flat({"dataset.private-size": 7})


def test_readme_settings_table_is_current():
    # If this fails: python -m fdkt_flwr.config --table, and paste it into the README.
    from fdkt_flwr.config import option_table

    readme = (ROOT / "README.md").read_text()
    for key, _, help_ in option_table():
        assert f"| `{key}` |" in readme and help_ in readme, key


@pytest.mark.parametrize(("library", "section"), [
    ("fdkt_flwr.generator:GeneratorTrainConfig", "generator"),
    ("fdkt_flwr.slm:SLMConfig", "slm"),
])
def test_library_dataclasses_take_their_defaults_from_the_run_config(library, section):
    """One place defines each default: a library dataclass that mirrors run settings must not
    drift from them (GeneratorTrainConfig once trained 3 epochs at lr 1e-3 on 128 tokens)."""
    import dataclasses
    import importlib

    module, name = library.split(":")
    lib = getattr(importlib.import_module(module), name)()
    run = getattr(FdktConfig(), section)
    shared = {f.name for f in dataclasses.fields(lib)} & {f.name for f in dataclasses.fields(run)}
    assert shared, "nothing shared: the test lost its subject"
    for key in sorted(shared - {"seed"}):
        assert getattr(lib, key) == getattr(run, key), key
