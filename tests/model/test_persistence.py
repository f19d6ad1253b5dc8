"""save_pretrained / from_pretrained round-trip to identical outputs, for every family."""
from __future__ import annotations

import pytest
import torch
from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit

from sumofparts import SumOfParts


@pytest.mark.parametrize("family", ["vit", "cnn", "bert"])
def test_round_trip_gives_identical_outputs(tmp_path, family):
    if family == "vit":
        sop = SumOfParts.from_backbone(tiny_vit(), adapter="vit", num_groups=5, tau=0.25, blur_kernel=3)
        x = torch.randn(2, 1, 16, 16)
    elif family == "cnn":
        sop = SumOfParts.from_backbone(tiny_cnn(), adapter="cnn", feature_layer="pool2", grid=(4, 4),
                                       num_groups=5, tau=0.25)
        x = torch.randn(2, 1, 16, 16)
    else:
        sop = SumOfParts.from_backbone(tiny_bert(), adapter="bert", num_groups=3, tau=0.3)
        x = text_batch()
    # perturb trainable weights so the test does not pass on a fresh initialisation alone
    with torch.no_grad():
        for p in sop.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    sop.eval()
    before = sop(x)
    sop.save_pretrained(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    loaded = SumOfParts.from_pretrained(tmp_path / "ck").eval()  # rebuilt from the saved spec alone
    after = loaded(x)
    for name in ("logits", "group_logits", "group_weights", "scale"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    assert torch.equal(before.masks, after.masks)


def test_saving_over_an_existing_checkpoint_is_atomic(tmp_path):
    sop = SumOfParts.from_backbone(tiny_vit(), adapter="vit", num_groups=4, tau=0.25)
    sop.save_pretrained(tmp_path / "ck")
    sop.save_pretrained(tmp_path / "ck")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ck"]
    assert leftovers == []
