"""Figure functions: shapes in, figures out, clear refusals of wrong inputs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sumofparts.report import figures as F  # noqa: E402

torch.set_num_threads(1)
NAMES = ["none", "vertical", "horizontal", "both"]


def _groups(G=6, H=16, W=16):
    m = np.zeros((G, H, W), bool)
    for g in range(G):
        m[g, (2 * g) % H:(2 * g) % H + 3] = True
    return m


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_as_display_image_layouts():
    assert F.as_display_image(np.zeros((1, 8, 9))).shape == (8, 9)
    assert F.as_display_image(torch.zeros(3, 8, 9)).shape == (8, 9, 3)
    assert F.as_display_image(np.zeros((8, 9))).shape == (8, 9)


def test_refuses_hwc_one_channel_map():
    with pytest.raises(ValueError, match=r"\(H, W, C\).*expected \(C, H, W\) = \(1, 66, 66\)"):
        F.as_display_image(np.zeros((66, 66, 1)))
    with pytest.raises(ValueError, match=r"looks like \(H, W, C\)"):
        F.group_figure(np.zeros((16, 16, 1)), _groups(), np.ones(6) / 6, np.zeros(6, int), 0)


def test_refuses_batch_and_bad_channels():
    with pytest.raises(ValueError, match="a batch"):
        F.as_display_image(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        F.as_display_image(np.zeros((5, 8, 8)))
    with pytest.raises(ValueError, match="non-finite"):
        F.as_display_image(np.full((1, 4, 4), np.nan))


def test_refuses_mask_of_another_size():
    img = np.random.default_rng(0).normal(size=(1, 16, 16))
    with pytest.raises(ValueError, match=r"size \(8, 8\) but the image has size \(16, 16\)"):
        F.group_figure(img, np.ones((4, 8, 8), bool), np.ones(4) / 4, np.zeros(4, int), 0)
    with pytest.raises(ValueError, match="single mask"):
        F.check_masks(np.ones((16, 16), bool), (16, 16))
    with pytest.raises(ValueError, match="0 and 1"):
        F.check_masks(np.full((2, 16, 16), 0.5), (16, 16))
    with pytest.raises(ValueError, match=r"expected \(6,\)"):
        F.group_figure(img, _groups(), np.ones(5), np.zeros(6, int), 0)


def test_group_figure_panels_and_captions():
    img = torch.randn(1, 16, 16)
    w = np.array([0.5, 0.3, 0.0, 0.0, 0.2, 0.0])
    preds = np.array([1, 2, 1, 0, 1, 3])
    fig = F.group_figure(img, torch.as_tensor(_groups()), w, preds, 1, output_names=NAMES, target=1,
                         scales=np.full(6, 0.9), n_best=3, n_zero=3)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    best = [t for t in titles if "highest weight" in t]
    zero = [t for t in titles if "zero weight" in t]
    assert len(best) == 3 and len(zero) == 3
    assert best[0].startswith("group 0") and "weight 0.500" in best[0] and "agrees" in best[0]
    assert "final: vertical" in best[1]  # group 1 predicts horizontal
    colours = {ax.get_title(): ax.title.get_color() for ax in fig.axes}
    assert colours[best[0]] == F.AGREE_COLOR and colours[best[1]] == F.DISAGREE_COLOR
    assert F.select_groups(w, 2, 5) == ([0, 1], [2, 3, 5])


def test_regression_group_caption():
    text, colour = F.group_caption(0.25, 0.31, 0.28, kind="regression", output_names=["Omega_m", "sigma_8"],
                                   target=0)
    assert "Omega_m: 0.310" in text and colour == "black"


def test_attribution_figure_diverging_centred_with_label():
    img = np.random.default_rng(1).normal(size=(1, 16, 16))
    a = np.random.default_rng(2).normal(size=(16, 16)) * 3
    fig = F.attribution_figure(img, a, target_name="vertical")
    mappable = [im for ax in fig.axes for im in ax.images if im.cmap.name == F.DIVERGING_CMAP][0]
    assert mappable.norm.vmin == -mappable.norm.vmax == -np.abs(a).max()
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert any("vertical" in lab and "logit" in lab for lab in labels)
    with pytest.raises(ValueError, match="size"):
        F.attribution_figure(img, np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        F.attribution_figure(img, np.zeros((16, 16, 2)))


def test_methods_and_curves_figures():
    img = np.random.default_rng(3).normal(size=(3, 12, 12))
    fig = F.methods_figure(img, {"LIME": np.ones((3, 12, 12)), "IG": -np.ones((12, 12)), "none": np.zeros((12, 12))})
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("LIME") for t in titles) and any("all zero" in t for t in titles)
    with pytest.raises(ValueError, match="non-empty"):
        F.methods_figure(img, {})
    curves = {"SOP": {"fractions": [0.5, 1.0], "insertion": [0.4, 0.9], "deletion": [0.3, 0.1]}}
    fig = F.curves_figure(curves)
    assert [len(ax.lines) for ax in fig.axes[:2]] == [1, 1]
    with pytest.raises(ValueError, match="points"):
        F.curves_figure({"x": {"fractions": [0.5, 1.0], "insertion": [0.1]}})


def test_text_figures():
    toks = ["[CLS]", "a", "charming", "and", "funny", "movie", "[SEP]"]
    masks = np.zeros((3, len(toks)), bool)
    masks[0, :3] = masks[1, 2:] = masks[2, ::2] = True
    fig = F.text_groups_figure(toks, masks, [0.7, 0.3, 0.0], [1, 0, 1], 1, output_names=["rotten", "fresh"])
    texts = [t.get_text() for t in fig.texts]
    assert "charming" in texts and any("group 0 (highest weight)" in t for t in texts)
    assert fig.legends and "token in the group" in [t.get_text() for t in fig.legends[0].get_texts()]
    with pytest.raises(ValueError, match=r"size \(5,\) but the token sequence has size \(7,\)"):
        F.text_groups_figure(toks, masks[:, :5], [0.7, 0.3, 0.0], [1, 0, 1], 1)
    fig = F.text_attribution_figure(toks, np.linspace(-1, 1, len(toks)), target_name="fresh")
    assert any("fresh" in ax.get_xlabel() for ax in fig.axes)
    with pytest.raises(ValueError, match="one per token"):
        F.text_attribution_figure(toks, np.zeros(3))


def test_save_figure_png_and_svg(tmp_path):
    fig = F.curves_figure({"SOP": {"fractions": [0.5, 1.0], "insertion": [0.4, 0.9], "deletion": [0.3, 0.1]}})
    out = F.save_figure(fig, tmp_path / "sub" / "curves.png", close=True)
    assert out["png"].name == "curves.png" and out["svg"].name == "curves.svg"
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in out["svg"].read_bytes()[:2000]
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")]


def test_fast_renderings():
    img = np.random.default_rng(4).normal(size=(1, 10, 10))
    rgb = F.attribution_rgb(img, np.eye(10) - np.eye(10)[::-1])
    assert rgb.shape == (10, 10, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert F.array_data_uri(rgb, scale=3).startswith("data:image/png;base64,")
    masked = F.masked_rgb(img, np.eye(10, dtype=bool))
    assert masked.shape == (10, 10, 3)
