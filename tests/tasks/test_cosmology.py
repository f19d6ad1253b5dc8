"""The cosmology task: simulator physics, cache, splits, the CosmoGrid CNN and its weights."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import last_robust_step
from scipy.stats import skew
from torch import nn

from sumofparts.io import file_digest, read_json
from sumofparts.tasks import cosmology as cm
from sumofparts.tasks import get_task
from sumofparts.tasks.cosmology import (CL_ELLS, SIZES, CosmologyTask, FlatSkyGrid, SimulationConfig,
                                        convergence_cl, cut_maps, lognormal_shift, measure_power_spectrum,
                                        simulate_fields)
from sumofparts.tasks.cosmology_cnn import CNNTrainConfig, CosmoCNN, _fold_standardisation, train_cnn

torch.set_num_threads(1)

FIDUCIAL = (0.3, 0.8)
#: ell range of a 66×66 map of 3.5' pixels (the band the CNN sees)
ELL_BINS = np.geomspace(100, 3000, 13)


@pytest.fixture(scope="module")
def fiducial_cl():
    return convergence_cl(*FIDUCIAL, CL_ELLS)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return CosmologyTask().load_data(cache, size="small", seed=0, progress=False), cache


def _binned_theory(config: SimulationConfig, cl: np.ndarray, beam_arcmin: float = 0.0) -> np.ndarray:
    """The input C_ell averaged over the FFT modes of each bin, as the estimator averages them."""
    grid = FlatSkyGrid(config.field_pixels, config.pixel_arcmin)
    p = grid.cl_on_grid(CL_ELLS, cl) * np.exp(-(grid.ell * beam_arcmin * cm.ARCMIN) ** 2)
    which = np.digitize(grid.ell.ravel(), ELL_BINS) - 1
    ok = (which >= 0) & (which < len(ELL_BINS) - 1)
    return (np.bincount(which[ok], p.ravel()[ok], len(ELL_BINS) - 1)
            / np.bincount(which[ok], minlength=len(ELL_BINS) - 1))


# ----------------------------------------------------------------------------- physics

def test_gaussian_maps_have_the_input_spectrum(fiducial_cl):
    """Gaussian fields: every bin within 4 sigma of cosmic variance (+1 %), mean ratio within 2 %."""
    config = replace(SIZES["small"], lognormal=False, smoothing_arcmin=0.0)
    fields, _ = simulate_fields(*FIDUCIAL, 8, np.random.default_rng(1), config, cl=fiducial_cl)
    _, measured, modes = measure_power_spectrum(fields, config.pixel_arcmin, ELL_BINS)
    ratio = measured / _binned_theory(config, fiducial_cl)
    sigma = np.sqrt(2.0 / modes)       # k and -k are the same mode of a real field
    assert np.all(np.abs(ratio - 1) < 4 * sigma + 0.01), (ratio, sigma)
    assert abs(ratio.mean() - 1) < 0.02


def test_lognormal_maps_keep_the_spectrum_and_the_beam(fiducial_cl):
    """Lognormal fields (via the correlation function) keep C_ell within 5 %, smoothed ones C_ell·B²."""
    config = replace(SIZES["small"], smoothing_arcmin=0.0)
    fields, info = simulate_fields(*FIDUCIAL, 8, np.random.default_rng(2), config, cl=fiducial_cl)
    _, measured, _ = measure_power_spectrum(fields, config.pixel_arcmin, ELL_BINS)
    ratio = measured / _binned_theory(config, fiducial_cl)
    assert np.all(np.abs(ratio - 1) < 0.15) and abs(np.median(ratio) - 1) < 0.05, ratio
    assert info["lambda"] == pytest.approx(lognormal_shift(FIDUCIAL[0]))
    smoothed, _ = simulate_fields(*FIDUCIAL, 8, np.random.default_rng(2), SIZES["small"], cl=fiducial_cl)
    _, measured_s, _ = measure_power_spectrum(smoothed, config.pixel_arcmin, ELL_BINS)
    np.testing.assert_allclose(measured_s / measured, _binned_theory(config, fiducial_cl, 2.0)
                               / _binned_theory(config, fiducial_cl), rtol=5e-3)


def _map_std(omega_m: float, sigma_8: float) -> float:
    fields, _ = simulate_fields(omega_m, sigma_8, 2, np.random.default_rng(3), SIZES["small"])
    return float(cut_maps(fields, 66).std(axis=(1, 2)).mean())


def test_variance_grows_with_sigma8_and_omega_m():
    by_sigma8 = [_map_std(0.3, s8) for s8 in (0.5, 0.8, 1.2)]
    by_omega_m = [_map_std(om, 0.8) for om in (0.15, 0.3, 0.45)]
    assert by_sigma8[0] < by_sigma8[1] < by_sigma8[2], by_sigma8
    assert by_omega_m[0] < by_omega_m[1] < by_omega_m[2], by_omega_m


def test_maps_are_skewed_positive_with_broad_voids(fiducial_cl):
    fields, info = simulate_fields(*FIDUCIAL, 2, np.random.default_rng(4), SIZES["small"], cl=fiducial_cl)
    kappa = fields.ravel()
    assert abs(kappa.mean()) < 0.05 * kappa.std()
    assert skew(kappa) > 0.5
    assert (kappa < 0).mean() > 0.55                 # voids: most of the area, shallow
    assert kappa.max() > 3 * kappa.std()             # clusters: rare, high peaks
    assert kappa.max() > 2 * abs(kappa.min())
    assert kappa.min() > -info["lambda"]             # no void is emptier than empty


def test_lognormal_shift_grows_with_omega_m():
    assert lognormal_shift(0.15) == pytest.approx(0.0164, abs=5e-4)
    assert lognormal_shift(0.45) == pytest.approx(0.0396, abs=5e-4)
    assert lognormal_shift(0.2) < lognormal_shift(0.3) < lognormal_shift(0.5)


def test_latin_hypercube_strata():
    u = cm.latin_hypercube(10, 2, np.random.default_rng(0))
    for d in range(2):
        assert sorted(np.floor(u[:, d] * 10).astype(int)) == list(range(10))


def test_cut_maps_tiles_the_field():
    field = np.arange(2 * 132 * 132, dtype=float).reshape(2, 132, 132)
    maps = cut_maps(field, 66)
    assert maps.shape == (8, 66, 66)
    np.testing.assert_array_equal(maps[1], field[0, :66, 66:])
    np.testing.assert_array_equal(maps[6], field[1, 66:, :66])
    assert len(np.unique(maps)) == field.size        # non-overlapping, nothing lost


def test_shape_noise_option_adds_white_noise(fiducial_cl):
    quiet, _ = simulate_fields(*FIDUCIAL, 1, np.random.default_rng(5), SIZES["small"], cl=fiducial_cl)
    noisy_cfg = replace(SIZES["small"], shape_noise_ngal=10.0)
    noisy, _ = simulate_fields(*FIDUCIAL, 1, np.random.default_rng(5), noisy_cfg, cl=fiducial_cl)
    assert SIZES["default"].shape_noise_ngal is None    # off by default
    assert noisy.std() > 1.2 * quiet.std()


# ----------------------------------------------------------------------------- data set + cache

def test_shapes_dtypes_and_ranges(small):
    data, _ = small
    assert data.name == "cosmology" and data.kind == "regression"
    assert data.output_names == ["Omega_m", "sigma_8"] and data.num_outputs == 2
    cfg = SIZES["small"]
    assert len(data.train) + len(data.val) + len(data.test) == cfg.n_maps == 12 * 16
    x, y = data.train[0]
    assert x.shape == (1, 66, 66) and x.dtype == torch.float32
    assert y.shape == (2,) and y.dtype == torch.float32
    targets = torch.cat([data.train.targets, data.val.targets, data.test.targets])
    assert targets[:, 0].min() >= 0.1 and targets[:, 0].max() <= 0.5
    assert targets[:, 1].min() >= 0.4 and targets[:, 1].max() <= 1.4
    assert data.meta["kappa_norm"] == cm.KAPPA_NORM
    np.testing.assert_allclose(data.test.raw_kappa(0), data.test.inputs[0] * cm.KAPPA_NORM)
    assert data.test.map_std.shape == (len(data.test),) and bool((data.test.map_std > 0).all())
    assert data.test_foreground is None


def test_splits_are_disjoint_by_cosmology(small):
    data, _ = small
    ids = [set(s.cosmology.tolist()) for s in (data.train, data.val, data.test)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert set().union(*ids) == set(range(12))
    assert [len(i) for i in ids] == list(SIZES["small"].split_counts()) == [8, 2, 2]
    for split in (data.train, data.val, data.test):       # one cosmology -> one target
        for c in split.cosmologies():
            t = split.targets[split.cosmology == c]
            assert torch.all(t == t[0]) and len(t) == 16


def test_cache_is_reused_and_keyed_by_the_parameters(small, monkeypatch):
    data, cache = small
    assert data.meta["generated"] is True
    path = cm.cache_path(cache, SIZES["small"], "small")
    manifest = read_json(path / "manifest.json")
    assert manifest["content_hash"] == SIZES["small"].content_hash() == data.meta["content_hash"]
    assert manifest["n_maps"] == 192 and (path / "maps.safetensors").is_file()

    def boom(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(cm, "generate", boom)
    again = CosmologyTask().load_data(cache, size="small", seed=0, progress=False)
    assert again.meta["generated"] is False
    torch.testing.assert_close(again.test.inputs, data.test.inputs)

    base = SIZES["small"]
    hashes = {base.content_hash(), replace(base, smoothing_arcmin=1.0).content_hash(),
              replace(base, seed=1).content_hash(), replace(base, shape_noise_ngal=20.0).content_hash(),
              replace(base, n_cosmologies=13).content_hash()}
    assert len(hashes) == 5
    assert replace(base).content_hash() == base.content_hash()


@pytest.mark.parametrize("damage, reason", [
    ("flip", "does not match the digest"), ("nan", "does not match the digest"),
    ("zero-targets", "does not match the digest"), ("truncate", "does not match the digest"),
    ("no-digest", "no data digest"), ("bad-manifest", "unreadable"),
])
def test_a_damaged_cache_is_regenerated_with_a_warning(tmp_path, monkeypatch, damage, reason):
    import warnings

    from sumofparts.errors import CacheWarning
    from sumofparts.io import load_tensors, save_tensors

    # a power-law stand-in for pyccl keeps this fast; the cache is what is tested
    monkeypatch.setattr(cm, "convergence_cl", lambda om, s8, ells, config=None: 1e-9 * s8 ** 2 * (ells / 100) ** -1.2)
    cfg = replace(SIZES["small"], n_cosmologies=3, field_pixels=132)
    arrays, manifest = cm.load_or_generate(tmp_path, cfg, size="t", progress=False)
    path = cm.cache_path(tmp_path, cfg, "t")
    data = path / "maps.safetensors"
    assert manifest["data_sha256"] == read_json(path / "manifest.json")["data_sha256"]
    if damage == "flip":
        blob = bytearray(data.read_bytes())
        blob[-100] ^= 0xFF
        data.write_bytes(bytes(blob))
    elif damage in ("nan", "zero-targets"):  # still a valid safetensors file, other contents
        tensors = load_tensors(data)
        if damage == "nan":
            tensors["maps"][0, 0, 0] = float("nan")
        else:
            tensors["params"].zero_()
        save_tensors(data, tensors)
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:1000])
    elif damage == "no-digest":
        m = read_json(path / "manifest.json")
        del m["data_sha256"]
        (path / "manifest.json").write_text(json.dumps(m))
    else:
        (path / "manifest.json").write_text("{")
    with pytest.warns(CacheWarning, match=reason):
        again, m2 = cm.load_or_generate(tmp_path, cfg, size="t", progress=False)
    assert m2["generated"] is True
    for key in ("maps", "params"):
        np.testing.assert_array_equal(again[key], arrays[key])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the regenerated cache is trusted again
        third, m3 = cm.load_or_generate(tmp_path, cfg, size="t", progress=False)
    assert m3["generated"] is False


def test_generation_is_seeded(monkeypatch):
    # a power-law stand-in for pyccl keeps this fast; the seeding is what is tested
    monkeypatch.setattr(cm, "convergence_cl", lambda om, s8, ells, config=None: 1e-9 * s8 ** 2 * (ells / 100) ** -1.2)
    cfg = replace(SIZES["small"], n_cosmologies=3, field_pixels=132)
    a, b = cm.generate(cfg, progress=False), cm.generate(cfg, progress=False)
    np.testing.assert_array_equal(a["maps"], b["maps"])
    c = cm.generate(replace(cfg, seed=1), progress=False)
    assert not np.allclose(a["params"], c["params"])
    assert a["maps"].shape == (3 * 4, 66, 66) and a["maps"].dtype == np.float32


def test_bad_sizes_and_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown cosmology size"):
        CosmologyTask().load_data(tmp_path, size="huge")
    with pytest.raises(ValueError, match="multiple"):
        SimulationConfig(field_pixels=100)


# ----------------------------------------------------------------------------- the CNN

def test_cnn_shapes_and_named_layers():
    model = CosmoCNN().eval()
    x = torch.randn(3, 1, 66, 66)
    seen = {}
    handles = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.shape))
               for n in ("pool1", "pool2", "pool3", "fc3", "head")]
    out = model(x)
    for h in handles:
        h.remove()
    assert out.shape == (3, 2)
    assert seen["pool1"] == (3, 16, 31, 31)
    assert seen["pool2"] == (3, 32, 14, 14)             # the SOP cells
    assert seen["pool3"] == (3, 48, 5, 5) and model.fc1.in_features == 1200
    assert isinstance(model.head, nn.Linear) and model.head.in_features == 32
    mods = [m for _, m in model.named_modules()]
    assert len({id(m) for m in mods}) == len(mods)      # no module used twice
    assert not any(isinstance(m, nn.Flatten) for m in mods)
    assert [n for n, m in model.named_children() if isinstance(m, nn.Conv2d)] == ["conv1", "conv2", "conv3"]
    assert model.embed(x).shape == (3, 32) and model.features(x).shape == (3, 32, 14, 14)
    with pytest.raises(ValueError, match="66, 66"):
        model(torch.randn(2, 66, 66))


def test_authors_state_dict_maps_fc4_to_head():
    ref = CosmoCNN()
    theirs = {("fc4." + k[5:] if k.startswith("head.") else k): v for k, v in ref.state_dict().items()}
    model = CosmoCNN.from_authors_state_dict(theirs)
    x = torch.randn(2, 1, 66, 66)
    torch.testing.assert_close(model(x), ref(x))


def test_standardisation_folds_into_head():
    model = CosmoCNN().eval()
    x = torch.randn(4, 1, 66, 66)
    before = model(x)
    mean, std = torch.tensor([0.3, 0.9]), torch.tensor([0.1, 0.3])
    _fold_standardisation(model, mean, std)
    torch.testing.assert_close(model(x), before * std + mean)


def test_training_runs_and_keeps_the_best_epoch(small):
    data, _ = small
    model, log = train_cnn(data.train, data.val, CNNTrainConfig(max_epochs=2, patience=2, batch_size=32),
                           progress=False)
    assert log["epochs_run"] == 2 and 0 <= log["best_epoch"] < 2
    assert min(h["val_mse"] for h in log["history"]) == pytest.approx(log["val"]["mse"], rel=1e-4)
    assert not model.training and len(log["val"]["r2_per_output"]) == 2


def test_task_registry_backbone_and_adapter(small, tmp_path):
    data, _ = small
    task = get_task("cosmology")
    assert isinstance(task, CosmologyTask) and task.kind == "regression"
    from sumofparts.model import SOPConfig
    from sumofparts.training import TrainConfig

    assert SOPConfig.from_dict(task.sop_defaults).task == "regression"
    assert TrainConfig.from_dict(task.train_defaults).batch_size == 16
    with pytest.raises(FileNotFoundError, match="no cosmology backbone"):
        task.load_backbone(data, tmp_path, train_if_missing=False)
    adapter = task.make_adapter(CosmoCNN().eval())
    assert tuple(adapter.cell_grid) == (14, 14)
    assert adapter.num_cells(data.test.inputs[:2]) == 196


def test_committed_weights_match_the_default_data(small, tmp_path):
    assert cm.COMMITTED_WEIGHTS.is_file(), "the cosmology CNN's weights are committed with the package"
    side = read_json(cm.COMMITTED_WEIGHTS.with_suffix(".json"))
    # re-make (bash scripts/make_backbones.sh cosmology) whenever the simulator changes
    assert side["data_hash"] == SIZES["default"].content_hash()
    for key in ("seed", "epochs", "val", "test", "command", "chain"):
        assert key in side
    assert side["test"]["mse"] < 0.01 and min(side["test"]["r2_per_output"]) > 0.6
    # the committed CNN is group-robust: shown one random 20 % group of cells it still predicts
    # both parameters (the whole-map CNN it starts from: R² Omega_m -3.5 on such groups)
    last = last_robust_step(side)
    after = side[f"robust_step_{last}"]["after"]["test"]
    assert min(after["groups/zero"]["r2_per_output"]) > 0.5
    assert min(after["mean of 20 groups/zero"]["r2_per_output"]) > 0.75
    assert side["scratch"]["command"].startswith("python scripts/train_cosmology_backbone.py")
    assert side["weights_sha256"] == file_digest(cm.COMMITTED_WEIGHTS)  # the sidecar describes these weights
    assert len(side["chain"]) == last + 1 and side["command"] == side["chain"][-1]
    data, _ = small
    model = CosmologyTask().load_backbone(data, tmp_path, backbone="committed")
    assert isinstance(model, CosmoCNN) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    pred = model(data.test.inputs)
    assert pred.shape == (len(data.test), 2) and torch.isfinite(pred).all()
    # the committed backbone generalises to the small data's (unseen) cosmologies
    assert float(((pred - data.test.targets) ** 2).mean()) < 0.02


def test_train_mean_base_value_is_resolved_from_the_training_targets(small):
    from sumofparts.errors import ConfigError
    from sumofparts.pipeline import build_sop

    kw = dict(cache_dir=small[1], size="small", progress=False)
    sop, data = build_sop("cosmology", sop_overrides={"base_value": "train_mean", "num_groups": 4}, **kw)
    expected = data.train.targets.double().mean(0)
    assert torch.allclose(torch.tensor(sop.config.base_value, dtype=torch.float64), expected)
    out = sop(data.test.inputs[:3])
    # the explanation is exact with the base: prediction = b + Σ group attributions
    recon = torch.tensor(sop.config.base_value) + out.group_attributions.sum(1)
    assert torch.allclose(out.logits, recon, atol=1e-5)
    with pytest.raises(ConfigError, match="regression"):
        build_sop("synthetic", sop_overrides={"base_value": "train_mean"}, **kw)
