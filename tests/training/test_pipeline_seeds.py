"""`seed` (SOP's initialisation and batches) and `data_seed` (the data) are separate."""
from __future__ import annotations

import torch

from sumofparts.pipeline import build_sop


def _first_params(sop):
    return torch.cat([p.detach().flatten() for n, p in sop.named_parameters()
                      if p.requires_grad and not n.startswith("adapter.")])


def test_seed_changes_sop_not_the_data(tmp_path):
    kw = dict(cache_dir=tmp_path / "cache", size="small", progress=False)
    sop0, data0 = build_sop("synthetic", seed=0, **kw)
    sop1, data1 = build_sop("synthetic", seed=1, **kw)
    # the committed backbones were trained on data seed 0: a training seed must not move the splits
    assert torch.equal(data0.test.tensors[0], data1.test.tensors[0])
    assert torch.equal(data0.train.tensors[0], data1.train.tensors[0])
    assert not torch.equal(_first_params(sop0), _first_params(sop1))
    _, data2 = build_sop("synthetic", seed=0, data_seed=1, **kw)
    assert not torch.equal(data0.test.tensors[0], data2.test.tensors[0])
