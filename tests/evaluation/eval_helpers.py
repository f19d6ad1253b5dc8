"""Helpers and fixtures of the evaluation tests: a quickly trained synthetic SOP, linear tasks, test methods.

(Not a conftest.py: the root conftest is imported by name elsewhere, and a second one would shadow it.)
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import sumofparts.attribution as attribution
from sumofparts.attribution import AttributionMethod
from sumofparts.adapters import CNNAdapter
from sumofparts.model import SOPConfig, SumOfParts
from sumofparts.tasks import TaskData

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A synthetic-task SOP trained for a few steps, saved where `sop run` would put it."""
    from sumofparts.pipeline import build_sop
    from sumofparts.training import TrainConfig, train

    root = tmp_path_factory.mktemp("eval")
    sop, data = build_sop("synthetic", cache_dir=root / "cache", size="small", progress=False)
    res = train(sop, data.train, data.val, TrainConfig(steps=30, batch_size=32, lr=2e-3, warmup_steps=5,
                                                       eval_every=30), root / "run" / "sop", progress=False)
    return SimpleNamespace(sop=sop.eval(), data=data, best=res.best_dir, root=root)


class LinearNet(nn.Module):
    """f(x) = w · flatten(x) + b on 1×4×4 images (one output); every pixel is a cell."""

    input_shape = (1, 4, 4)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Linear(16, weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x):
        return self.head(self.feat(x).flatten(1))


def linear_task(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, train_y: torch.Tensor,
                kind: str = "regression") -> tuple[SumOfParts, TaskData]:
    """A (SOP, TaskData) pair around a linear backbone; the SOP is untrained (its rows are not the point)."""
    adapter = CNNAdapter(LinearNet(weight, bias).eval(), feature_layer="feat", classifier="head", grid=(4, 4))
    torch.manual_seed(0)
    sop = SumOfParts(adapter, SOPConfig(num_groups=4, num_heads=1, tau=0.25, generator_scale=1.0,
                                        selector_scale=1.0, task=kind)).eval()
    train = TensorDataset(torch.zeros(len(train_y), 1, 4, 4), train_y)
    data = TaskData(name="linear", kind=kind, train=train, val=train, test=TensorDataset(x, y),
                    output_names=[f"y{i}" for i in range(weight.shape[0])] if kind == "regression"
                    else [f"c{i}" for i in range(weight.shape[0])])
    return sop, data


def _weights(adapter) -> torch.Tensor:
    return adapter.classifier.weight.detach()


class Exact(AttributionMethod):
    """Gradient×Input of the linear backbone: a_i = w_i x_i, exact."""

    name = "exact"
    completeness = "baseline"
    multiplies_by_inputs = True

    def _attribute(self, inputs, target, **kwargs):
        return (_weights(self.adapter)[target].reshape(-1, *inputs.shape[1:]) * inputs).detach()


class Reversed(Exact):
    name = "reversed"

    def _attribute(self, inputs, target, **kwargs):
        return -super()._attribute(inputs, target)


class Noise(Exact):
    """Seeded random scores, a different draw per item."""

    name = "noise"
    completeness = None

    def _attribute(self, inputs, target, **kwargs):
        g = torch.Generator().manual_seed(int(inputs.abs().sum() * 1000) % 10_000)
        return torch.randn(inputs.shape, generator=g)


class Zero(Exact):
    """The empty explanation: every cell 0."""

    name = "zero"

    def _attribute(self, inputs, target, **kwargs):
        return torch.zeros_like(inputs)


class Raster(Exact):
    """Ranks cells in raster order (what an index tie-break gives a constant map)."""

    name = "raster"
    completeness = None

    def _attribute(self, inputs, target, **kwargs):
        B = inputs.shape[0]
        ranks = torch.arange(inputs[0].numel(), dtype=torch.float32).reshape(1, *inputs.shape[1:])
        return -ranks.expand(B, *inputs.shape[1:]).clone()


class NaNFirst(Exact):
    """Exact, except that the first item of each batch gets a NaN score on one cell."""

    name = "nanfirst"

    def _attribute(self, inputs, target, **kwargs):
        a = super()._attribute(inputs, target).clone()
        a.view(a.shape[0], -1)[0, 0] = float("nan")
        return a


TEST_METHODS = {cls.name: cls for cls in (Exact, Reversed, Noise, Zero, Raster, NaNFirst)}


@pytest.fixture
def test_methods(monkeypatch):
    """Register the methods above beside the real ones (post-hoc, each with its "-F" form)."""
    for name, cls in TEST_METHODS.items():
        monkeypatch.setitem(attribution.POST_HOC_METHODS, name, cls)
    return TEST_METHODS
