"""Bad input gets an error that names what was expected and what came."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit

from sumofparts import SOPConfig, SumOfParts
from sumofparts.errors import ConfigError, InputError


@pytest.fixture
def sop():
    return SumOfParts.from_backbone(tiny_vit(), adapter="vit", num_groups=4, tau=0.25)


def test_wrong_shape_names_expected_and_received(sop):
    with pytest.raises(ValueError, match=r"expected an image batch of shape \(B, 1, 16, 16\), got tensor of shape "
                                         r"\(1, 16, 16\).*unsqueeze"):
        sop(torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\)"):
        sop(torch.randn(2, 3, 16, 16))


def test_wrong_dtype(sop):
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        sop(torch.zeros(1, 1, 16, 16, dtype=torch.long))


def test_nan_and_inf_inputs(sop):
    x = torch.randn(2, 1, 16, 16)
    x[0, 0, 0, 0] = float("nan")
    x[1, 0, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="2 NaN or infinite values"):
        sop(x)


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5, float("nan")])
def test_tau_outside_unit_interval(tau):
    with pytest.raises(ConfigError, match=r"tau must be a finite number in \(0, 1\]"):
        SOPConfig(tau=tau)


def test_tau_too_small_for_the_grid():
    with pytest.raises(ValueError, match="floor\\(tau\\*N\\) = 0"):
        SumOfParts.from_backbone(tiny_vit(), adapter="vit", num_groups=2, tau=0.05)


def test_more_groups_than_candidates():
    with pytest.raises(ValueError, match="num_groups=17 is more than the 16 candidate groups"):
        SumOfParts.from_backbone(tiny_vit(), adapter="vit", num_groups=17)


def test_target_outside_the_classes(sop):
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\), got \[5, 5\]"):
        sop.explain(x, target=5)
    with pytest.raises(ValueError, match="sequence of 2 ints"):
        sop.explain(x, target=[0, 1, 2])


def test_text_inputs_are_checked():
    sop = SumOfParts.from_backbone(tiny_bert(), adapter="bert", num_groups=3, tau=0.3)
    with pytest.raises(TypeError, match="expected a dict with 'input_ids'"):
        sop(torch.zeros(2, 5, dtype=torch.long))
    bad = text_batch()
    bad["input_ids"] = bad["input_ids"].float()
    with pytest.raises(ValueError, match="int64 tensor of shape \\(B, L\\)"):
        sop(bad)
    bad = text_batch()
    bad["input_ids"][0, 1] = 500
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 128\)"):
        sop(bad)
    bad = text_batch()
    bad["attention_mask"] = bad["attention_mask"][:, :4]
    with pytest.raises(ValueError, match="attention_mask of shape"):
        sop(bad)


def test_unknown_adapter_and_stray_arguments():
    with pytest.raises(ValueError, match="unknown adapter 'resnet'"):
        SumOfParts.from_backbone(tiny_cnn(), adapter="resnet")
    with pytest.raises(ValueError, match="feature_layer 'nope' is not a module"):
        SumOfParts.from_backbone(tiny_cnn(), adapter="cnn", feature_layer="nope")
    with pytest.raises(TypeError, match="ViTForImageClassification"):
        SumOfParts.from_backbone(tiny_cnn(), adapter="vit")


def test_checkpoint_missing_files(tmp_path, sop):
    with pytest.raises(FileNotFoundError, match="expected a checkpoint directory"):
        SumOfParts.from_pretrained(tmp_path / "nothing")
    sop.save_pretrained(tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        SumOfParts.from_pretrained(tmp_path / "ck")


def test_checkpoint_with_mismatched_shapes(tmp_path, sop):
    sop.save_pretrained(tmp_path / "ck")
    other = SumOfParts.from_backbone(tiny_vit(num_labels=5), adapter="vit", num_groups=4, tau=0.25)
    with pytest.raises(ValueError, match="does not fit this model.*shape mismatches"):
        other.load_weights(tmp_path / "ck" / "model.safetensors")


def test_checkpoint_config_with_unknown_keys(tmp_path, sop):
    sop.save_pretrained(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["groups"] = 3
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown SOPConfig keys \\['groups'\\]"):
        SumOfParts.from_pretrained(tmp_path / "ck")


# --------------------------------------------------------------------------- issue 10: inputs users meet

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_refused_with_how_to_convert(sop, dtype):
    with pytest.raises(InputError, match=rf"backbone's dtype torch.float32, got dtype {dtype}.*x.to\(torch.float32\)"):
        sop(torch.randn(2, 1, 16, 16, dtype=dtype))
    sop(torch.randn(2, 1, 16, 16, dtype=dtype).to(torch.float32))  # the advice works


def test_an_empty_batch_is_refused(sop):
    with pytest.raises(InputError, match=r"empty batch.*\(0, 1, 16, 16\)"):
        sop(torch.zeros(0, 1, 16, 16))
    text = SumOfParts.from_backbone(tiny_bert(), adapter="bert", num_groups=3, tau=0.3)
    empty = {k: v[:0] for k, v in text_batch().items()}
    with pytest.raises(InputError, match="at least one sequence"):
        text(empty)


def test_a_vit_whose_image_size_is_not_a_multiple_of_the_patch_size_is_refused():
    with pytest.raises(ConfigError, match=r"image size divisible by the patch size.*\(18, 18\).*\(4, 4\)"):
        SumOfParts.from_backbone(tiny_vit(image_size=18, patch=4), adapter="vit", num_groups=4, tau=0.25)


@pytest.mark.parametrize("target", [torch.tensor(2.9), 2.9, [0.0, 1.0], torch.tensor([True, False]), "1"])
def test_float_targets_are_refused_not_truncated(sop, target):
    with pytest.raises(InputError, match="expected target as an int or a sequence of 2 ints"):
        sop.explain(torch.randn(2, 1, 16, 16), target=target)
    assert int(sop.explain(torch.randn(2, 1, 16, 16), target=torch.tensor(2)).target[0]) == 2


def test_bert_token_types_lengths_and_masks_are_checked():
    sop = SumOfParts.from_backbone(tiny_bert(), adapter="bert", num_groups=3, tau=0.3)
    bad = text_batch()
    bad["token_type_ids"] = torch.full_like(bad["input_ids"], 2)  # type_vocab_size is 2
    with pytest.raises(InputError, match=r"token_type_ids must lie in \[0, 2\), got values in \[2, 2\]"):
        sop(bad)
    long = text_batch(B=1, L=65)  # the position table has 64 entries
    with pytest.raises(InputError, match="65 tokens are longer than the model's position table \\(64 positions\\)"):
        sop(long)
    bad = text_batch()
    bad["attention_mask"] = bad["attention_mask"] * 3
    with pytest.raises(InputError, match="attention_mask must hold only 0"):
        sop(bad)
    ok = text_batch()
    ok["token_type_ids"] = torch.ones_like(ok["input_ids"])
    assert torch.isfinite(sop(ok).logits).all()


def test_text_models_check_num_groups_against_the_candidates():
    # 1e8 groups would allocate gigabytes: refused by the config table at once
    with pytest.raises(ConfigError, match=r"num_groups must be an integer in \[1, 100000\]"):
        SumOfParts.from_backbone(tiny_bert(), adapter="bert", num_groups=10**8)
    # more groups than one head's candidates at the longest sequence (64 positions)
    with pytest.raises(ConfigError, match="num_groups=65 is more than the 64 candidate groups"):
        SumOfParts.from_backbone(tiny_bert(), adapter="bert", num_groups=65, tau=0.3)
    # and at run time, against this batch's cells: 2 heads x 12 tokens
    sop = SumOfParts.from_backbone(tiny_bert(), adapter="bert", num_groups=30, tau=0.3, sequential_heads=False,
                                   num_heads=2)
    with pytest.raises(ConfigError, match="num_groups=30 is more than the 24 candidate groups"):
        sop(text_batch(L=12))


def test_adapter_arguments_are_typed_and_unknown_ones_named():
    with pytest.raises(ConfigError, match=r"grid must be a list of 2 integers >= 1, got '44'"):
        SumOfParts.from_backbone(tiny_cnn(), adapter="cnn", feature_layer="pool2", grid="44", num_groups=4)
    with pytest.raises(ConfigError, match="drop_patches must be a boolean"):
        SumOfParts.from_backbone(tiny_vit(), adapter="vit", drop_patches="no", num_groups=4)
    with pytest.raises(ConfigError, match=r"unknown arguments \['num_group'\]: neither SOPConfig fields .* nor "
                                          r"arguments of ViTAdapter \(drop_patches, generator_layer"):
        SumOfParts.from_backbone(tiny_vit(), adapter="vit", num_group=4)


def test_weights_with_missing_or_unexpected_tensors_are_refused_by_name(tmp_path, sop):
    from sumofparts.errors import CheckpointError
    from sumofparts.io import save_tensors

    state = sop.state_dict()
    names = sorted(state)
    dropped = {k: v for k, v in state.items() if k not in names[:4]}
    save_tensors(tmp_path / "missing.safetensors", dropped)
    listed = ", ".join(sorted(names[:4])[:3])  # at most three named
    with pytest.raises(CheckpointError, match=rf"does not fit this model: 4 missing tensors \(e\.g\. {listed}\)$"):
        sop.load_weights(tmp_path / "missing.safetensors")
    save_tensors(tmp_path / "extra.safetensors", {**state, "selector.extra": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"1 unexpected tensors \(e\.g\. selector\.extra\)$"):
        sop.load_weights(tmp_path / "extra.safetensors")
