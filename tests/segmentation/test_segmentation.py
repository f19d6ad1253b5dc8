"""Segmentation: the U-Net and its targets, the segment forward and its maps, the shares table,
``sop segment``, the report section, and the committed weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from captum import attr as ca
from torch import nn

from sumofparts.segmentation.attribution import (SegmentSum, predicted_segments, random_maps,
                                                 segment_attributions, segment_shares)
from sumofparts.segmentation.report import render_segmentation_section, segmentation_payload
from sumofparts.segmentation.study import run_segmentation
from sumofparts.segmentation.unet import (NUM_CLASSES, SegmentationUNet, UNetConfig, committed_unet_path,
                                          evaluate_segmentation, load_unet, save_unet, segmentation_targets)
from sumofparts.tasks import fashion as fm

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HAVE_FASHION = (all((fm.DEFAULT_DIR / n).is_file() for pair in fm.FILES.values() for n in pair)
                or "SOP_FASHION_MNIST_DIR" in __import__("os").environ)
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST is not installed "
                                                            "(apt-get install dataset-fashion-mnist)")


def tiny_unet(seed: int = 0) -> SegmentationUNet:
    torch.manual_seed(seed)
    return SegmentationUNet(UNetConfig(channels=(4, 6, 8), num_classes=3)).eval()


def blobs(n: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, 1, 16, 16) images: a bright square on a zero background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 16, 16)
    for i in range(n):
        r, c = (int(v) for v in torch.randint(1, 8, (2,), generator=g))
        x[i, 0, r:r + 6, c:c + 6] = 0.5 + torch.rand(6, 6, generator=g)
    return x


# --- the model and its targets ---------------------------------------------------------------------
def test_unet_shapes_names_and_config_checks():
    m = tiny_unet()
    assert m(torch.zeros(2, 1, 16, 16)).shape == (2, 3, 16, 16)
    assert {"enc1", "bottleneck", "context", "up2", "dec2", "up1", "dec1", "head"} <= set(m.layer_names())
    relus = [mod for mod in m.modules() if isinstance(mod, nn.ReLU)]
    assert len(relus) == len({id(r) for r in relus}) == 11 and not any(r.inplace for r in relus)
    with pytest.raises(ValueError, match="divisible by 4"):
        m(torch.zeros(1, 1, 18, 16))
    with pytest.raises(ValueError, match="channels must be 3 ints"):
        UNetConfig(channels=(4, 6))
    with pytest.raises(ValueError, match=r"unknown U-Net configuration keys \['depth'\]"):
        UNetConfig.from_dict({"channels": [4, 6, 8], "depth": 5})
    with pytest.raises(ValueError, match="num_classes must be an int"):
        UNetConfig.from_dict({"num_classes": "11"})


def test_targets_are_the_filled_silhouette_labelled_with_the_class():
    x = torch.zeros(2, 1, 8, 8)
    x[0, 0, 1:6, 1:6] = 1.0
    x[0, 0, 3, 3] = 0.0  # a hole: filled
    x[1, 0, 0, 0] = 0.3
    t = segmentation_targets(x, torch.tensor([4, 0]))
    assert t.dtype == torch.int64 and t.shape == (2, 8, 8)
    assert int(t[0, 3, 3]) == 5 and int((t[0] == 5).sum()) == 25 and int((t[0] == 0).sum()) == 39
    assert int(t[1, 0, 0]) == 1 and int((t[1] > 0).sum()) == 1
    with pytest.raises(ValueError, match="labels"):
        segmentation_targets(x, torch.tensor([1]))


class FixedLogits(nn.Module):
    """Returns the one-hot logits of a fixed class map, whatever the input."""

    def __init__(self, classes: torch.Tensor, K: int):
        super().__init__()
        self.logits = nn.functional.one_hot(classes, K).permute(0, 3, 1, 2).float()
        self.config = UNetConfig(channels=(1, 1, 1), num_classes=K)

    def forward(self, x):
        return self.logits[: x.shape[0]]


def test_scores_on_a_known_prediction():
    truth = torch.zeros(2, 4, 4, dtype=torch.long)
    truth[0, :2, :2] = 1  # image 0: class 1 on 4 pixels; image 1: class 2 on 4 pixels
    truth[1, 2:, 2:] = 2
    pred = truth.clone()
    pred[0, 0, 2] = 1  # one background pixel called class 1
    pred[1, 3, 3] = 1  # one class-2 pixel called class 1
    s = evaluate_segmentation(FixedLogits(pred, 3), torch.zeros(2, 1, 4, 4), truth)
    assert s.pixel_accuracy == pytest.approx(30 / 32)
    # IoU: background 23/24 (24 true, 23 predicted, all right), class 1 4/6, class 2 3/4
    assert s.per_class_iou == pytest.approx([23 / 24, 4 / 6, 3 / 4])
    assert s.mean_iou == pytest.approx((23 / 24 + 4 / 6 + 3 / 4) / 3)
    assert s.foreground_iou == pytest.approx(8 / 9)
    assert s.object_accuracy == 1.0 and s.n == 2


def test_save_and_load_refuse_what_does_not_match(tmp_path):
    m = tiny_unet()
    path = save_unet(m, {"note": "test"}, tmp_path / "u.safetensors")
    loaded, info = load_unet(path)
    assert info["note"] == "test" and all(not p.requires_grad for p in loaded.parameters())
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(loaded(x), m(x))
    with pytest.raises(FileNotFoundError, match="no U-Net weights"):
        load_unet(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match=r"expected a \.safetensors"):
        load_unet(tmp_path / "u.pt")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**sidecar, "config": {"channels": [4, 6, 9],
                                                                          "num_classes": 3}}))
    with pytest.raises(ValueError, match="differ in shape"):
        load_unet(path)
    path.with_suffix(".json").write_text(json.dumps({**sidecar, "weights_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        load_unet(path)


# --- the segment forward and its maps -------------------------------------------------------------------
def test_segment_sum_is_the_logits_summed_over_the_segment():
    m = tiny_unet()
    x = blobs(2)
    seg = torch.zeros(2, 16, 16, dtype=torch.bool)
    seg[0, 2:5, 3:9] = True
    seg[1, 10:, :4] = True
    with torch.no_grad():
        out = SegmentSum(m)(x, seg)
        logits = m(x)
    for b in range(2):
        assert torch.allclose(out[b], logits[b][:, seg[b]].sum(-1), atol=1e-5)


def test_maps_of_a_pixelwise_model_stay_inside_the_segment():
    """A 1×1-convolution model: pixel p's output depends on pixel p only, so the attribution of the
    segment's summed output is exactly 0 outside the segment (summing the whole output, as
    `out.sum()` does, would not be)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    x = blobs(2) + 0.1
    seg = torch.zeros(2, 16, 16, dtype=torch.bool)
    seg[:, 4:10, 4:10] = True
    maps = segment_attributions(model, x, seg, torch.tensor([1, 2]), methods=["intgrad", "guided_backprop"],
                                n_steps=16)
    for name, a in maps.items():
        assert a.shape == (2, 16, 16)
        assert bool((a[~seg] == 0).all()), name
        assert float(a[seg].abs().sum()) > 0, name


def test_maps_equal_captum_on_the_recipe_and_ig_is_complete():
    m = tiny_unet()
    x = blobs(3)
    seg, cls = predicted_segments(m, x)
    assert seg.shape == (3, 16, 16) and bool(seg.flatten(1).any(1).all()) and bool((cls > 0).all())
    maps = segment_attributions(m, x, seg, cls, n_steps=32, layer="dec2")

    class Recipe(nn.Module):  # the talk's wrapper: the model's output summed over a fixed segment
        def __init__(self, s):
            super().__init__()
            self.model, self.s = m, s.float()

        def forward(self, inp):
            return (self.model(inp) * self.s[:, None]).sum((2, 3))

    net = Recipe(seg)
    gbp = ca.GuidedBackprop(net).attribute(x, target=cls).sum(1)
    assert torch.allclose(maps["guided_backprop"], gbp, atol=1e-6)
    cam = ca.LayerGradCam(net, m.dec2).attribute(x, target=cls, relu_attributions=True)
    assert torch.allclose(maps["layer_gradcam"], ca.LayerAttribution.interpolate(cam, (16, 16), "bilinear")[:, 0],
                          atol=1e-6)
    # the talk's form works one image at a time (its fixed segment would not follow IG's scaled copies)
    ig = torch.cat([ca.IntegratedGradients(Recipe(seg[b:b + 1])).attribute(
        x[b:b + 1], baselines=torch.zeros_like(x[b:b + 1]), target=int(cls[b]), n_steps=32) for b in range(3)])
    assert torch.allclose(maps["intgrad"], ig.sum(1), atol=1e-6)
    with torch.no_grad():
        gap = (net(x) - net(torch.zeros_like(x))).gather(1, cls.view(-1, 1)).squeeze(1)
    # completeness, up to the quadrature error at the ReLUs' kinks (about 1% with 32 steps here)
    assert torch.allclose(maps["intgrad"].flatten(1).sum(1), gap, rtol=3e-2)
    with pytest.raises(ValueError, match=r"unknown layer 'nope'.*enc1"):
        segment_attributions(m, x, seg, cls, methods=["layer_gradcam"], layer="nope")
    with pytest.raises(ValueError, match="unknown segmentation method"):
        segment_attributions(m, x, seg, cls, methods=["lime"])
    with pytest.raises(ValueError, match="no pixel of the requested class"):
        predicted_segments(FixedLogits(torch.zeros(1, 16, 16, dtype=torch.long), 3), x[:1], classes=2)


def test_shares_against_the_segment_area():
    seg = torch.zeros(2, 4, 4, dtype=torch.bool)
    seg[:, :2, :2] = True  # area 1/4
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, -1.0  # 3/4 of |mass| inside; positive part all inside
    maps[1] = 1.0  # uniform: share = area
    s = segment_shares(maps, seg)
    assert s.inside.tolist() == pytest.approx([0.75, 0.25]) and s.positive_inside.tolist() == pytest.approx([1, 0.25])
    assert s.area.tolist() == pytest.approx([0.25, 0.25]) and s.concentration.tolist() == pytest.approx([3, 1])
    seg64 = torch.zeros(64, 32, 32, dtype=torch.bool)
    seg64[:, 8:20, 5:30] = True
    r = segment_shares(random_maps((64, 32, 32), seed=1), seg64)
    assert abs(float(r.concentration.mean()) - 1.0) < 0.05  # a random map prefers no pixel
    assert torch.equal(random_maps((2, 3), 5), random_maps((2, 3), 5))


# --- the study, the command, the report --------------------------------------------------------------------
def test_run_segmentation_writes_tables_and_figures(tmp_path):
    m = tiny_unet()
    x, y = blobs(6), torch.tensor([0, 1, 0, 1, 1, 0])
    res = run_segmentation(m, x, y, tmp_path / "segmentation", n=5, n_steps=8, batch_size=2, n_figures=2, progress=False,
                           command="test", class_names=["background", "a", "b"])
    assert [r["method"] for r in res.rows] == ["intgrad", "guided_backprop", "layer_gradcam", "random"]
    assert len(res.per_image) == 5 and all(0 <= r["inside"] <= 1 for r in res.rows)
    for r in res.rows:
        assert r["outside"] == pytest.approx(1 - r["inside"]) and r["n"] == 5
    saved = json.loads((tmp_path / "segmentation" / "segmentation.json").read_text())
    assert saved["rows"] == res.rows and saved["command"] == "test" and saved["n"] == 5
    assert {"segmentation.md", "segmentation.csv", "segmentation_maps.png", "segmentation_maps.svg",
            "segmentation_shares.png"} <= {p.name for p in (tmp_path / "segmentation").iterdir()}
    assert "| Layer Grad-CAM |" in (tmp_path / "segmentation" / "segmentation.md").read_text()
    section = segmentation_payload(tmp_path)
    html = render_segmentation_section(section)
    assert "Segmentation: attribution of a predicted segment" in html and "random map (reference)" in html
    assert html.count("data:image/png;base64,") == 2
    assert segmentation_payload(tmp_path / "nothing") is None and render_segmentation_section(None) == ""
    from sumofparts.report.html import render_html

    page = render_html({"task": {"name": "fashion"}, "examples": [], "segmentation": section})
    assert 'id="segmentation"' in page and render_html({"task": {"name": "x"}, "examples": []}).count(
        'id="segmentation"') == 0


@needs_fashion
def test_sop_segment_command(tmp_path, capsys):
    from sumofparts.cli import main

    out = tmp_path / "seg"
    rc = main(["segment", "--n", "4", "--n-steps", "4", "--size", "small", "--out", str(out), "--figures", "1",
               "--threads", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| Integrated Gradients |" in printed and "random map (reference)" in printed
    saved = json.loads((out / "segmentation.json").read_text())
    assert saved["command"].startswith("sop segment --n 4 --n-steps 4") and saved["unet"]["test"]["n"] == 2000
    for args, message in ((["--n", "0"], "--n must be >= 1"),
                          (["--layer", "nope"], "unknown layer 'nope' of the U-Net; expected one of: enc1"),
                          (["--weights", str(tmp_path / "x.safetensors")], "no U-Net weights")):
        assert main(["segment", *args, "--out", str(out), "--no-progress"]) == 2
        assert message in capsys.readouterr().err


@needs_fashion
def test_committed_unet_segments_the_test_images():
    """The committed weights load from their checked sidecar and segment the task's first 100 test images."""
    model, info = load_unet()
    assert committed_unet_path().stat().st_size < 400_000 and info["num_parameters"] < 100_000
    data = fm.FashionTask().load_data(size="small", seed=0, progress=False)
    x, y = data.test.tensors
    scores = evaluate_segmentation(model, x, segmentation_targets(x, y))
    assert scores.foreground_iou > 0.95 and scores.pixel_accuracy > 0.85 and scores.mean_iou > 0.6
    assert NUM_CLASSES == model.config.num_classes == 11
    assert np.isclose(info["test"]["n"], 2000)
