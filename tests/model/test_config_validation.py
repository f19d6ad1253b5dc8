"""The configuration tables: one declared type and range per field, for the API, the files and the CLI."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from sumofparts import SOPConfig, TrainConfig
from sumofparts.cli.arguments import parse_overrides
from sumofparts.errors import ConfigError
from sumofparts.model.config import SOP_CONFIG_FIELDS
from sumofparts.training import TRAIN_CONFIG_FIELDS
from sumofparts.validation import Field, check_fields, check_value


@pytest.mark.parametrize("cls, table", [(SOPConfig, SOP_CONFIG_FIELDS), (TrainConfig, TRAIN_CONFIG_FIELDS)])
def test_every_field_has_exactly_one_row_and_its_default_passes(cls, table):
    names = [f.name for f in dataclasses.fields(cls)]
    assert sorted(names) == sorted(table)
    cls()  # the defaults satisfy the table


# a wrong value for every SOPConfig field, and the words the error must contain
SOP_BAD = [
    ("num_groups", 2.5), ("num_groups", "44"), ("num_groups", 0), ("num_groups", True), ("num_groups", 10**8),
    ("num_heads", 0), ("num_heads", 1.0),
    ("tau", 0.0), ("tau", 1.5), ("tau", float("nan")), ("tau", "0.2"),
    ("generator_scale", float("nan")), ("generator_scale", float("inf")), ("generator_scale", 0.0),
    ("generator_scale", -1.0), ("generator_dim", 0), ("generator_dim", 3.0),
    ("generator_norm", "no"), ("generator_norm", 1),
    ("generator_init", "zeros"), ("generator_init_noise", float("nan")), ("generator_init_noise", -0.1),
    ("blur_kernel", 2), ("blur_kernel", -1), ("blur_kernel", "3"),
    ("blur_sigma", 0.0), ("blur_sigma", float("inf")),
    ("selector_scale", float("nan")), ("selector_scale", 0.0),
    ("task", "segmentation"), ("sequential_heads", "no"), ("sequential_heads", None), ("backbone", "vit"),
]


@pytest.mark.parametrize("name, value", SOP_BAD, ids=[f"{n}={v!r}" for n, v in SOP_BAD])
def test_sopconfig_refuses_bad_values_naming_the_field(name, value):
    with pytest.raises(ConfigError, match=rf"^{name} must "):
        SOPConfig(**{name: value})


TRAIN_BAD = [("steps", 0), ("steps", "abc"), ("batch_size", 1.5), ("lr", "abc"), ("lr", float("nan")),
             ("lr", 0.0), ("weight_decay", -1.0), ("warmup_steps", -1), ("min_lr_ratio", 2.0),
             ("eval_every", 0), ("checkpoint_every", -5), ("val_batches", None), ("distill_weight", float("inf")),
             ("max_grad_norm", -1.0), ("seed", -1), ("seed", 2**64)]


@pytest.mark.parametrize("name, value", TRAIN_BAD, ids=[f"{n}={v!r}" for n, v in TRAIN_BAD])
def test_trainconfig_refuses_bad_values_naming_the_field(name, value):
    with pytest.raises(ConfigError, match=rf"^{name} must "):
        TrainConfig(**{name: value})


def test_values_are_normalised_not_silently_changed():
    cfg = SOPConfig(num_groups=np.int64(12), tau=np.float32(0.25), generator_scale=1, sequential_heads=np.bool_(False))
    assert type(cfg.num_groups) is int and cfg.num_groups == 12
    assert type(cfg.generator_scale) is float and cfg.generator_scale == 1.0
    assert cfg.sequential_heads is False and math.isclose(cfg.tau, 0.25)


def test_a_file_needs_every_required_field_but_the_api_keeps_its_defaults():
    full = SOPConfig().to_file_dict()
    assert full["format_version"] == 2
    assert SOPConfig.from_file_dict(full) == SOPConfig()
    for name in SOP_CONFIG_FIELDS:
        partial = {k: v for k, v in full.items() if k != name}
        with pytest.raises(ConfigError, match=rf"missing fields \['{name}'\]"):
            SOPConfig.from_file_dict(partial, source="ck/config.json")
    assert SOPConfig.from_dict({"tau": 0.3}).num_groups == 20  # the API: defaults for what is not given
    legacy = {k: v for k, v in full.items() if k != "format_version"}  # written before the version existed
    assert SOPConfig.from_file_dict(legacy) == SOPConfig()
    # version 0 predates the base value and the candidate schemes: those files computed with b = 0 and
    # the paper's candidates, and read so without the two fields
    older = {k: v for k, v in legacy.items() if k not in ("base_value", "candidate_queries")}
    cfg = SOPConfig.from_file_dict(older)
    assert cfg.base_value is None and cfg.candidate_queries == "paper"
    with pytest.raises(ConfigError, match=r"config.json: missing fields \['base_value', 'candidate_queries'\]"):
        SOPConfig.from_file_dict({**older, "format_version": 1})
    # version 1 predates the selector's whole-input term: read as computed, without it
    v1 = {k: v for k, v in full.items() if k != "selector_input_scale"} | {"format_version": 1}
    assert SOPConfig.from_file_dict(v1).selector_input_scale == 0.0
    with pytest.raises(ConfigError, match=r"config.json: missing fields \['selector_input_scale'\]"):
        SOPConfig.from_file_dict({**v1, "format_version": 2})
    with pytest.raises(ConfigError, match="config.json: expected a JSON object of SOPConfig fields, got list"):
        SOPConfig.from_file_dict([])


def test_field_descriptions_are_what_users_read():
    assert Field(int, min=1).describe() == "an integer >= 1"
    assert Field(float, gt=0, max=1).describe() == "a finite number in (0, 1]"
    assert Field(bool).describe() == "a boolean (true or false)"
    assert Field(int, min=1, max=1_000_000_000).describe() == "an integer in [1, 1000000000]"
    assert Field(list, item=float, optional=True).describe() == "a list of finite numbers or null"


def test_a_list_field_for_new_fields_such_as_base_value():
    """The lead adds ``base_value: list[float] | None``: the table type this needs works."""
    spec = Field(list, item=float, optional=True, required=False, default=None)
    assert check_value("base_value", [0.5, np.float64(2)], spec) == [0.5, 2.0]
    assert check_value("base_value", None, spec) is None
    for bad in ([float("nan")], ["1"], "0.5", [True]):
        with pytest.raises(ConfigError, match="base_value must be a list of finite numbers or null"):
            check_value("base_value", bad, spec)
    assert check_fields({}, {"base_value": spec}, require=True) == {"base_value": None}


def test_cli_overrides_parse_json_and_check_the_table():
    assert parse_overrides(["tau=0.3", "sequential_heads=false", "generator_dim=null", "task=regression"],
                           SOP_CONFIG_FIELDS, "--set") == {"tau": 0.3, "sequential_heads": False,
                                                            "generator_dim": None, "task": "regression"}
    cases = [(["generator_scale=NaN"], "--set generator_scale must be a finite number"),
             (["sequential_heads=no"], "--set sequential_heads must be a boolean"),
             (["num_groups=2.5"], "--set num_groups must be an integer"),
             (["tau=1e999"], "--set tau must be a finite number"),
             (["groups=3"], "--set: unknown key 'groups'"),
             (["backbone={}"], "--set: unknown key 'backbone'"),
             (["tau"], "--set expects KEY=VALUE")]
    for pairs, match in cases:
        with pytest.raises(ConfigError, match=match):
            parse_overrides(pairs, SOP_CONFIG_FIELDS, "--set", exclude=("backbone",))
    with pytest.raises(ConfigError, match="--train-set lr must be a finite number"):
        parse_overrides(["lr=abc"], TRAIN_CONFIG_FIELDS, "--train-set")
