"""Our metrics equal Captum's and Quantus's where the definitions are the same, on a small CNN.

Shared definitions (docs/evaluation.md, "Peer parity"): infidelity (Captum ``infidelity``,
Quantus ``Infidelity``), max-sensitivity (Captum ``sensitivity_max``, Quantus
``MaxSensitivity``) and the deletion curve (Quantus ``PixelFlipping``), each given the same
perturbations. Quantus is a pinned test extra (``pip install -e .[test]``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sumofparts import metrics as M
from sumofparts.adapters import CNNAdapter

torch.set_num_threads(1)


@pytest.fixture
def setup(cnn):
    adapter = CNNAdapter(cnn, feature_layer="pool2", classifier="head", grid=(4, 4))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 16, 16, generator=g)
    with torch.no_grad():
        target = adapter(x).argmax(-1)
    return adapter, x, target


def grad_times_input(adapter):
    def explain(inp, target):
        with torch.enable_grad():  # Captum's sensitivity_max calls it under no_grad
            inp = inp.detach().clone().requires_grad_(True)
            t = torch.as_tensor(target).reshape(-1)
            out = adapter(inp)
            (grad,) = torch.autograd.grad(out.gather(1, t.view(-1, 1)).sum(), inp)
        return (grad * inp).detach()
    return explain


def saliency(adapter):
    def explain(inp, target):
        inp = inp.detach().clone().requires_grad_(True)
        t = torch.as_tensor(target).reshape(-1)
        (grad,) = torch.autograd.grad(adapter(inp).gather(1, t.view(-1, 1)).sum(), inp)
        return grad.detach()
    return explain


# -- infidelity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("multiply_by_inputs", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_equals_captum(setup, multiply_by_inputs, normalize):
    from captum.metrics import infidelity as captum_infidelity

    adapter, x, target = setup
    attr = (grad_times_input if multiply_by_inputs else saliency)(adapter)(x, target)
    Mn = 6
    removals = M.subset_removals(adapter.cell_index_map(x), 16, Mn, items=[0, 1, 2], seed=4)  # (M, B, 1, 16, 16)
    ours = M.infidelity(adapter, x, attr, target, removals=removals, multiply_by_inputs=multiply_by_inputs,
                        normalize=normalize)
    order = removals.transpose(0, 1).reshape(3 * Mn, *x.shape[1:]).float()  # Captum: rows b·M + m

    def perturb(inputs):
        removed = inputs * order
        return (order if multiply_by_inputs else removed), inputs - removed

    theirs = captum_infidelity(adapter, perturb, x, attr, target=target, n_perturb_samples=Mn, normalize=normalize)
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-4, atol=1e-6)
    assert float(ours.min()) > 0  # not a trivial 0 = 0


def test_infidelity_equals_quantus_on_nested_patches(setup):
    quantus = pytest.importorskip("quantus", reason="Quantus is a test extra: pip install -e .[test]")
    adapter, x, target = setup
    attr = saliency(adapter)(x, target)
    # Quantus removes 4×4 patches one after another (raster order), each time on top of the earlier ones
    cells = adapter.cell_index_map(x)  # (1, 16, 16): the cell of each pixel, raster-numbered 4×4 patches
    removals = torch.stack([(cells < j + 1).expand(3, *cells.shape) for j in range(16)])  # (16, B, 1, 16, 16)
    ours = M.infidelity(adapter, x, attr, target, removals=removals)
    metric = quantus.Infidelity(perturb_baseline=0.0, perturb_patch_sizes=[4], n_perturb_samples=1, abs=False,
                                normalise=False, loss_func="mse", disable_warnings=True)
    theirs = metric(model=adapter.model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attr.numpy(),
                    softmax=False, device="cpu", channel_first=True)
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-4, atol=1e-7)


# -- max-sensitivity -------------------------------------------------------------------------------
def test_max_sensitivity_equals_captum_and_quantus(setup):
    from captum.metrics import sensitivity_max

    adapter, x, target = setup
    explain = grad_times_input(adapter)
    Mn = 5
    noise = M.uniform_perturbations(x.shape, Mn, 0.05, items=[0, 1, 2], seed=2)  # (M, B, 1, 16, 16)
    ours = M.max_sensitivity(explain, x, target, perturbations=noise)
    assert bool(torch.isfinite(ours).all()) and float(ours.min()) > 0

    stacked = noise.transpose(0, 1).reshape(3 * Mn, *x.shape[1:])  # Captum: rows b·M + m

    def perturb(inputs, radius):
        return inputs + stacked

    def captum_explain(inp, target):  # Captum passes and expects tuples of tensors
        return (explain(inp[0] if isinstance(inp, tuple) else inp, target),)

    theirs = sensitivity_max(captum_explain, x, perturb_func=perturb, perturb_radius=0.05, n_perturb_samples=Mn,
                             target=target)
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-4, atol=1e-6)

    quantus = pytest.importorskip("quantus", reason="Quantus is a test extra: pip install -e .[test]")
    draws = iter(noise.numpy())

    def quantus_perturb(arr, indices=None, indexed_axes=None, **kwargs):
        return arr + next(draws).reshape(arr.shape)

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    metric = quantus.MaxSensitivity(nr_samples=Mn, perturb_func=quantus_perturb, abs=False, normalise=False,
                                    disable_warnings=True)
    q = metric(model=adapter.model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=explain(x, target).numpy(),
               explain_func=quantus_explain, softmax=False, device="cpu", channel_first=True)
    np.testing.assert_allclose(ours.numpy(), np.asarray(q), rtol=1e-4, atol=1e-6)


# -- deletion curve --------------------------------------------------------------------------------
class LinearNet(nn.Module):
    input_shape = (1, 4, 4)

    def __init__(self):
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Linear(16, 3)
        with torch.no_grad():
            g = torch.Generator().manual_seed(3)
            self.head.weight.copy_(torch.randn(3, 16, generator=g))
            self.head.bias.copy_(torch.randn(3, generator=g))

    def forward(self, x):
        return self.head(self.feat(x).flatten(1))


def test_deletion_curve_equals_quantus_pixel_flipping():
    quantus = pytest.importorskip("quantus", reason="Quantus is a test extra: pip install -e .[test]")
    net = LinearNet().eval()
    adapter = CNNAdapter(net, feature_layer="feat", classifier="head", grid=(4, 4))  # a cell per pixel
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        target = adapter(x).argmax(-1)
    attr = (net.head.weight[target] * x.flatten(1)).detach()  # distinct scores: no ties to break
    ours = M.deletion_curve(adapter, x, attr, steps=4, target=target)  # 4 cells removed per step
    metric = quantus.PixelFlipping(features_in_step=4, perturb_baseline=0.0, return_auc_per_sample=False,
                                   abs=False, normalise=False, disable_warnings=True)
    theirs = metric(model=net, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attr.reshape(x.shape).numpy(),
                    softmax=True, device="cpu", channel_first=True)
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-5, atol=1e-6)
