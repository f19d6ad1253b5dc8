"""SOP trained on the binomial through the tabular adapter (the fourth backbone family)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sumofparts.adapters import IdentityHead, TabularAdapter
from sumofparts.theory import binomial
from sumofparts.theory.errors import grouped_insertion_errors, subset_values
from sumofparts.theory.lp import solve_primal
from sumofparts.theory.errors import insertion_targets
from sumofparts.theory.sop_fit import fit_sop_on_polynomial, sop_grouped_attribution


def test_tabular_adapter_masks_features_to_zero_and_checks_shapes():
    p = binomial(6)
    adapter = TabularAdapter(IdentityHead(p, 1), num_features=6)
    x = torch.ones(2, 6)
    masks = torch.zeros(2, 1, 6, dtype=torch.bool)
    masks[:, 0, :4] = True  # S1 ∪ S2
    y, z = adapter.forward_groups(x, masks)
    assert torch.equal(y[:, 0, 0], torch.ones(2))  # the first monomial alone
    assert torch.equal(z, y)  # identity head: the embedding is the output
    with pytest.raises(ValueError, match=r"expected a feature batch of shape \(B, 6\)"):
        adapter.validate(torch.ones(2, 5))


def test_sop_on_the_binomial_is_an_exact_sum_and_beats_every_feature_attribution_on_insertion():
    torch.manual_seed(0)
    d = 6
    p = binomial(d)
    sop, info = fit_sop_on_polynomial(p, d, steps=150)
    out = sop(torch.ones(3, d))
    assert torch.allclose(out.logits, out.group_attributions.sum(1), atol=1e-6)
    groups, scores = sop_grouped_attribution(sop, d)
    assert all(len(g) == 2 * d // 3 for g in groups)
    values = subset_values(p, d=d)
    sop_error = float(grouped_insertion_errors(values, groups, scores).sum())
    lp_optimum = solve_primal(insertion_targets(values)).value
    # grouped scores escape the feature-attribution bound even when SOP's fit is imperfect
    assert sop_error < lp_optimum
    assert np.isfinite(info["val_mse"])
