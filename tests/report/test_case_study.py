"""Cosmology case study on synthetic arrays with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sumofparts.report import case_study as CS

torch.set_num_threads(1)


def _planted(n=12, H=20, W=20, seed=0):
    """Maps with a planted peak (top-left block) and a planted void (bottom-right block).

    Group 0 covers the peak, group 1 the void region, group 2 a flat positive strip.
    """
    rng = np.random.default_rng(seed)
    maps = 0.1 * rng.normal(size=(n, 1, H, W))
    maps[:, 0, 2, 2] = 50.0                      # a peak far above 3 (and 5) sigma
    maps[:, 0, 12:20, 12:20] -= 2.0              # an under-dense region
    maps[:, 0, 0:2, 10:20] = np.abs(maps[:, 0, 0:2, 10:20]) + 0.5   # positive, no peak
    masks = np.zeros((n, 3, H, W), bool)
    masks[:, 0, 0:5, 0:5] = True
    masks[:, 1, 12:20, 12:20] = True
    masks[:, 2, 0:2, 10:20] = True
    return maps, masks


def test_classification_of_planted_groups():
    maps, masks = _planted()
    lab = CS.classify_groups(maps, masks)
    assert lab["cluster"][:, 0].all() and lab["high"][:, 0].all() and not lab["void"][:, 0].any()
    assert lab["void"][:, 1].all() and not lab["cluster"][:, 1].any()
    assert not lab["void"][:, 2].any() and not lab["cluster"][:, 2].any()
    assert [CS.EXCLUSIVE_KINDS[k] for k in lab["kind"][0]] == ["cluster", "void", "neither"]
    # a peak between the two thresholds is a cluster but not a high-significance one
    sigma = maps[0, 0].std()
    lab2 = CS.classify_groups(maps[:1], masks[:1], cluster_sigma=3.0, high_sigma=float(50 / sigma) + 1)
    assert lab2["cluster"][0, 0] and not lab2["high"][0, 0]


def test_void_and_cluster_at_once():
    maps, masks = _planted(n=2)
    both = masks.copy()
    both[:, 0] |= masks[:, 1]                    # the peak plus the void: mean < 0 and a peak
    lab = CS.classify_groups(maps, both)
    assert lab["void"][:, 0].all() and lab["cluster"][:, 0].all()
    assert CS.EXCLUSIVE_KINDS[lab["kind"][0, 0]] == "void+cluster"


def test_shares_histograms_bootstrap_and_verdict():
    maps, masks = _planted(n=30)
    n = len(maps)
    w = np.zeros((n, 3, 2))
    w[:, :, 0] = [0.2, 0.7, 0.1]                 # Omega_m: mostly the void
    w[:, :, 1] = [0.6, 0.3, 0.1]                 # sigma_8: mostly the cluster
    res = CS.case_study(torch.as_tensor(maps), torch.as_tensor(masks), torch.as_tensor(w), n_boot=200)
    sh = res["shares"]
    assert sum(sh[k][0] for k in CS.EXCLUSIVE_KINDS) == pytest.approx(1.0)
    assert sum(sh[k][1] for k in CS.EXCLUSIVE_KINDS) == pytest.approx(1.0)
    assert sh["any void"] == pytest.approx([0.7, 0.3]) and sh["any cluster"] == pytest.approx([0.2, 0.6])
    h = res["histograms"]["any void"]
    assert np.asarray(h["counts"]).shape == (2, 10) and h["n_groups"] == n
    assert h["counts"][0][7] == n and h["counts"][1][3] == n        # 0.7 -> bin 7, 0.3 -> bin 3
    assert np.sum(res["histograms"]["neither"]["fractions"][0]) == pytest.approx(1.0)
    lo, hi = res["bootstrap"]["shares"]["any void"]["low"][0], res["bootstrap"]["shares"]["any void"]["high"][0]
    assert lo <= 0.7 <= hi
    claims = res["verdict"]["claims"]
    assert claims["voids weigh more for Omega_m than for sigma_8"] == "yes"
    assert claims["clusters weigh more for sigma_8 than for Omega_m"] == "yes"
    assert claims["voids dominate (void share > cluster share, both outputs)"] == "no"  # sigma_8 favours clusters
    assert res["verdict"]["reproduced"] is False and "instead" in res["verdict"]["summary"]
    md = CS.case_study_markdown(res, command="sop case-study --n 30")
    assert "| any void |" in md and "Command: `sop case-study --n 30`" in md
    fig = CS.case_study_figure(res)
    assert len(fig.axes) == 3
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_no_conclusion_about_a_parameter_sop_cannot_predict():
    maps, masks = _planted(n=30)
    w = np.zeros((30, 3, 2))
    w[:, :, 0] = [0.2, 0.7, 0.1]
    w[:, :, 1] = [0.6, 0.3, 0.1]
    res = CS.case_study(maps, masks, w, n_boot=100, r2=[-2.27, 0.87])
    claims = res["verdict"]["claims"]
    # every comparison across outputs involves Omega_m: none is stated; sigma_8's own claim is
    assert claims["voids weigh more for Omega_m than for sigma_8"].startswith("not stated: SOP's R² for Omega_m is -2.27")
    assert claims["voids weigh more than clusters for Omega_m"].startswith("not stated")
    assert claims["voids weigh more than clusters for sigma_8"] == "no"
    assert "Omega_m: no conclusion" in res["verdict"]["summary"] and res["verdict"]["reproduced"] is False
    md = CS.case_study_markdown(res)
    assert "R² Omega_m -2.270" in md and "only when its R² is at least 0.7" in md
    ok = CS.case_study(maps, masks, w, n_boot=100, r2=[0.8, 0.9])["verdict"]["claims"]
    assert ok["voids weigh more for Omega_m than for sigma_8"] == "yes"
    with pytest.raises(ValueError, match="r2 has 1 values"):
        CS.case_study(maps, masks, w, n_boot=10, r2=[0.8])


def test_bootstrap_interval_is_wide_when_maps_disagree():
    maps, masks = _planted(n=40, seed=1)
    w = np.zeros((40, 3, 2))
    w[:20, 1, :] = 1.0                           # half the maps: all weight on the void
    w[20:, 0, :] = 1.0                           # the other half: all on the cluster
    res = CS.case_study(maps, masks, w, n_boot=300, seed=0)
    b = res["bootstrap"]["shares"]["any void"]
    assert res["shares"]["any void"][0] == pytest.approx(0.5)
    assert b["low"][0] < 0.45 and b["high"][0] > 0.55
    assert res["verdict"]["claims"]["voids weigh more for Omega_m than for sigma_8"] == "unclear"


def test_refuses_bad_shapes():
    maps, masks = _planted(n=3)
    with pytest.raises(ValueError, match=r"expected \(n, G, H, W\)"):
        CS.classify_groups(maps, masks[:, :, :10])
    with pytest.raises(ValueError, match="one channel"):
        CS.classify_groups(np.zeros((3, 2, 20, 20)), masks)
    with pytest.raises(ValueError, match="weights has shape"):
        CS.case_study(maps, masks, np.ones((3, 4, 2)))
    with pytest.raises(ValueError, match="high_sigma"):
        CS.classify_groups(maps, masks, cluster_sigma=3, high_sigma=2)
    empty = masks.copy()
    empty[0, 2] = False
    with pytest.raises(ValueError, match="at least one pixel"):
        CS.classify_groups(maps, empty)


def test_run_case_study_writes_files(tmp_path):
    """run_case_study on a stand-in regression task: a tiny CNN SOP on 1-channel maps."""
    from torch.utils.data import TensorDataset

    from sumofparts.adapters import CNNAdapter
    from sumofparts.model import SOPConfig, SumOfParts
    from sumofparts.tasks import TaskData
    from sumofparts.tasks.synthetic import BarsCNN

    torch.manual_seed(0)
    maps, _ = _planted(n=10, H=16, W=16)
    x = torch.as_tensor(maps, dtype=torch.float32)
    ds = TensorDataset(x, torch.rand(10, 2))
    data = TaskData(name="cosmology-standin", kind="regression", train=ds, val=ds, test=ds,
                    output_names=["Omega_m", "sigma_8"])
    cnn = BarsCNN(num_classes=2).eval()
    sop = SumOfParts(CNNAdapter(cnn, feature_layer="pool2", classifier="head", grid=(4, 4)),
                     SOPConfig(num_groups=6, num_heads=2, tau=0.25, task="regression"))
    res = CS.run_case_study(sop, data, tmp_path, n_boot=50, command="test")
    for key in ("json", "markdown", "png", "svg"):
        assert (tmp_path / res["paths"][key].split("/")[-1]).is_file()
    assert res["n_maps"] == 10 and res["groups_per_map"] == 6
    assert sum(res["shares"][k][0] for k in CS.EXCLUSIVE_KINDS) == pytest.approx(1.0)
