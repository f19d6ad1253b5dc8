"""Property-based tests: random configs and random inputs never crash deep inside torch.

For any configuration (valid or not: wrong types, NaN/inf, out-of-range values) and any
input batch (empty, wrong shape, other dtypes, NaN values, out-of-range token ids), building
and running a :class:`SumOfParts` model either

* gives an output that satisfies the SOP invariants — logits equal the sum of the group
  attributions (1e-5), every mask holds exactly ``max(1, floor(tau * n_valid))`` valid cells,
  finite logits from finite inputs — or
* raises an error of the project's own types (:class:`SOPError`) with a message.

The CLI's ``--set``/``--train-set`` parser gets the same treatment through ``sop train``: a
one-line ``error:`` and exit status 2, never a traceback.

Examples are derandomised (the same ones every run) and few enough that the file runs in
well under a minute on one core.
"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_bert, tiny_cnn, tiny_vit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sumofparts import SumOfParts
from sumofparts.errors import SOPError

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

BACKBONES = {}


def backbone(family):
    if family not in BACKBONES:
        BACKBONES[family] = {"vit": tiny_vit, "cnn": tiny_cnn, "bert": tiny_bert}[family]()
    return BACKBONES[family]


ADAPTER_KWARGS = {"vit": {}, "cnn": {"feature_layer": "pool2", "grid": (4, 4)}, "bert": {}}

anything_bad = st.one_of(st.text(max_size=4), st.none(), st.booleans(), st.just([1, 2]),
                         st.floats(allow_nan=True, allow_infinity=True), st.just(10**8), st.just(2.5),
                         st.integers(-3, 0))

#: per field: a strategy of values that are valid (or at least of the right type and sensible size)
GOOD = {
    "num_groups": st.integers(1, 18),  # up to 16 for a 16-cell grid with one head
    "num_heads": st.integers(1, 4),
    "tau": st.sampled_from([0.01, 0.1, 0.2, 0.25, 0.3, 0.5, 0.9, 1.0]) | st.floats(0.01, 1.0),
    "generator_scale": st.sampled_from([1e-3, 0.06, 1.0, 30.0, 1e6]),
    "generator_dim": st.none() | st.integers(1, 48),
    "generator_norm": st.booleans(),
    "generator_init": st.sampled_from(["identity", "random"]),
    "generator_init_noise": st.sampled_from([0.0, 0.5, 3.0, 1e3]),
    "blur_kernel": st.sampled_from([0, 0, 1, 3, 5]),
    "blur_sigma": st.sampled_from([1e-3, 0.5, 1.0, 1e3]),
    "selector_scale": st.sampled_from([1e-3, 0.01, 1.0, 10.0, 1e6]),
    "task": st.sampled_from(["classification", "regression"]),
    "sequential_heads": st.booleans(),
}


@st.composite
def configs(draw):
    """A config of valid values (some fields left at their defaults), in a quarter of the
    examples with one field set to anything at all."""
    out = {"num_groups": draw(GOOD["num_groups"])}
    for name, good in GOOD.items():
        if draw(st.booleans()):
            out[name] = draw(good)
    if draw(st.integers(0, 3)) == 0:
        out[draw(st.sampled_from(sorted(GOOD)))] = draw(anything_bad)
    return out


DTYPES = [torch.float32] * 20 + [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool]


@st.composite
def image_batches(draw):
    B = draw(st.sampled_from([0] + [1, 2, 3] * 4))
    shape = draw(st.sampled_from([(B, 1, 16, 16)] * 20 + [(B, 3, 16, 16), (B, 1, 15, 16), (1, 16, 16), (B, 256)]))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randn(shape, generator=g).mul(draw(st.sampled_from([0.1, 1.0, 3.0])))
    if draw(st.integers(0, 19)) == 0 and x.numel():
        x.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf")]))
    return x.to(dtype)


@st.composite
def text_batches(draw):
    B = draw(st.sampled_from([0] + [1, 2, 3] * 4))
    L = draw(st.sampled_from([1, 3, 8] + [12] * 10 + [64, 65]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    high = draw(st.sampled_from([128] * 12 + [140]))  # 140: ids outside the vocabulary
    ids = torch.randint(5, high, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    if L > 2:
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        cut = draw(st.integers(1, L - 1))
        mask[-1:, cut:] = 0
    batch = {"input_ids": ids.to(draw(st.sampled_from([torch.int64] * 12 + [torch.int32, torch.float32]))),
             "attention_mask": mask}
    kind = draw(st.integers(0, 15))
    if kind == 1:
        batch["token_type_ids"] = torch.randint(0, draw(st.sampled_from([2, 3])), (B, L), generator=g)
    elif kind == 2:
        batch["attention_mask"] = mask * 2  # not 0/1
    elif kind == 3:
        batch["extra"] = mask
    elif kind == 4:
        del batch["attention_mask"]
    return batch


def check_invariants(sop, out, inputs):
    B = sop.backbone.batch_size(inputs)
    C = sop.num_outputs
    G = sop.config.num_groups
    assert out.logits.shape == (B, C)
    assert out.group_logits.shape == (B, G, C) and out.group_weights.shape == (B, G, C)
    # the prediction is the weighted sum of the group predictions
    torch.testing.assert_close(out.logits, out.group_attributions.sum(1), atol=1e-5, rtol=1e-5)
    # finite logits from finite inputs
    assert torch.isfinite(out.logits).all()
    # every mask holds exactly max(1, floor(tau * n_valid)) valid cells
    valid = sop.backbone.valid_cells(inputs)
    n_valid = valid.sum(-1)
    k = torch.clamp(torch.floor(sop.config.tau * n_valid.double() + 1e-9).long(), min=1)
    assert torch.equal(out.masks.sum(-1), k[:, None].expand(B, G))
    assert not (out.masks & ~valid[:, None, :]).any()
    # sparsemax: weights are a distribution over groups for each output
    torch.testing.assert_close(out.group_weights.sum(1), torch.ones(B, C), atol=1e-5, rtol=0)


def run_model(family, config, inputs):
    try:
        sop = SumOfParts.from_backbone(backbone(family), adapter=family, **ADAPTER_KWARGS[family], **config)
        sop.eval()
        with torch.no_grad():
            out = sop(inputs)
    except SOPError as exc:
        assert str(exc).strip(), "an error without a message"
        return None
    check_invariants(sop, out, inputs)
    return out


@pytest.mark.parametrize("family", ["vit", "cnn"])
@settings(max_examples=60, **SETTINGS)
@given(config=configs(), inputs=image_batches())
def test_image_models_give_an_sop_output_or_a_project_error(family, config, inputs):
    torch.manual_seed(0)
    run_model(family, config, inputs)


@settings(max_examples=50, **SETTINGS)
@given(config=configs(), inputs=text_batches())
def test_text_models_give_an_sop_output_or_a_project_error(config, inputs):
    torch.manual_seed(0)
    run_model("bert", config, inputs)


def test_the_properties_can_fail():
    """The checks above are not vacuous: valid configs and inputs do produce outputs."""
    out = run_model("vit", {"num_groups": 5, "tau": 0.25}, torch.randn(2, 1, 16, 16))
    assert out is not None and out.logits.shape == (2, 3)
    assert run_model("bert", {"num_groups": 3, "tau": 0.3}, {"input_ids": torch.tensor([[101, 7, 8, 9, 102]]),
                                                            "attention_mask": torch.ones(1, 5, dtype=torch.long)})
    assert run_model("vit", {"tau": math.nan}, torch.randn(2, 1, 16, 16)) is None


# --------------------------------------------------------------------------- the CLI's parser

FIELD_NAMES = ["num_groups", "num_heads", "tau", "generator_scale", "generator_dim", "generator_norm",
               "generator_init", "blur_kernel", "blur_sigma", "selector_scale", "task", "sequential_heads",
               "backbone", "nope"]
TRAIN_NAMES = ["steps", "batch_size", "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "eval_every",
               "checkpoint_every", "val_batches", "distill_weight", "max_grad_norm", "seed", "learning_rate"]
values = st.one_of(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "true", "false", "null", "no", "abc",
                                    "[1, 2]", "{}", "", "0", "-1", "2.5", "44", '"44"', "0.2", "1e-3", "20",
                                    "identity", "regression"]),
                   st.integers(-5, 50).map(str), st.floats(allow_nan=False, width=32).map(repr),
                   st.text(st.characters(blacklist_categories=("Cs",)), max_size=6))


def pairs(names):
    return st.lists(st.tuples(st.sampled_from(names) | st.text("abc_", max_size=5), values)
                    .map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=3)


@settings(max_examples=80, **SETTINGS)
@given(sop_set=pairs(FIELD_NAMES), train_set=pairs(TRAIN_NAMES))
def test_cli_overrides_give_a_config_or_a_one_line_error(tmp_path_factory, capsys, sop_set, train_set):
    from sumofparts.cli import main, resolve_configs

    try:
        sop_over, cfg = resolve_configs("synthetic", sop_set, train_set, seed=0)
    except SOPError as exc:
        assert str(exc).strip()
    else:
        assert set(sop_over) <= set(FIELD_NAMES[:-2]) and cfg.steps >= 1
    # the whole command: the options are checked first; the output directory (under a file)
    # then fails, so nothing trains, and every failure is one line without a traceback
    root = tmp_path_factory.mktemp("cli")
    (root / "file").write_text("x")
    argv = ["train", "--task", "synthetic", "--out", str(root / "file" / "out"), "--no-progress"]
    if sop_set:
        argv += ["--set", *sop_set]
    if train_set:
        argv += ["--train-set", *train_set]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
