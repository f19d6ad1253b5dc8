"""The group selector, pinned: sparsemax over the groups, and the scores it starts from."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_cnn

from sumofparts import SumOfParts
from sumofparts.errors import InputError
from sumofparts.model.selector import GroupSelector


def _selector(weight: torch.Tensor, scale: float = 1.0) -> GroupSelector:
    return GroupSelector(weight, scale)


def test_weights_are_the_sparsemax_of_the_scores_over_groups():
    """Scores (1.0, 0.8, −1.0) for class 0: sparsemax's threshold is 0.4, so the weights are exactly
    (0.6, 0.4, 0); equal scores for class 1 share the weight equally. A softmax (or 1.5-entmax)
    gives the third group a positive weight and other values."""
    sel = _selector(torch.eye(2))
    z = torch.tensor([[[1.0, 0.0], [0.8, 0.0], [-1.0, 0.0]]])  # (B=1, G=3, D=2)
    w = sel(z)
    assert w.shape == (1, 3, 2)
    assert torch.allclose(w[0, :, 0], torch.tensor([0.6, 0.4, 0.0]), atol=1e-6)
    assert w[0, 2, 0].item() == 0.0  # an exact zero, not a small weight
    assert torch.allclose(w[0, :, 1], torch.full((3,), 1 / 3), atol=1e-6)
    # each class's weights are a distribution over the groups, never over the classes
    assert torch.allclose(w.sum(1), torch.ones(1, 2), atol=1e-6)


def test_the_scale_sharpens_the_selection():
    """s_s multiplies the scores before the sparsemax: ×10 leaves only the best group for class 0."""
    z = torch.tensor([[[1.0, 0.0], [0.8, 0.0], [-1.0, 0.0]]])
    w = _selector(torch.eye(2), scale=10.0)(z)
    assert w[0, :, 0].tolist() == [1.0, 0.0, 0.0]


def test_initial_scores_are_each_groups_own_logit_less_the_bias():
    """At initialisation ``s_ij = s_s · <u_j, z_i>`` with U the classifier's weight: for a linear
    classifier ``y = z U^T + bias``, the scores are ``s_s · (y − bias)``."""
    torch.manual_seed(0)
    classifier = torch.nn.Linear(5, 3)
    sel = _selector(classifier.weight, scale=2.5)
    z = torch.randn(2, 4, 5)
    with torch.no_grad():
        expected = 2.5 * (classifier(z) - classifier.bias)
    assert torch.allclose(sel.scores(z), expected, atol=1e-5)
    # the queries are a trainable copy: changing the classifier afterwards changes nothing
    with torch.no_grad():
        classifier.weight.mul_(3.0)
    assert torch.allclose(sel.scores(z), expected, atol=1e-5)
    assert sel.class_queries.requires_grad


def test_sop_selector_starts_from_the_backbone_group_logits():
    """In a fresh SOP the selector's scores are s_s · (y_i − bias) for the backbone's outputs y_i
    on each group: the groups that predict a class best get its weight."""
    torch.manual_seed(0)
    cnn = tiny_cnn()
    sop = SumOfParts.from_backbone(cnn, adapter="cnn", feature_layer="pool2", classifier="head", grid=(4, 4),
                                   num_groups=5, tau=0.25, selector_scale=3.0).eval()
    x = torch.randn(2, 1, 16, 16)
    probs, valid = sop.candidates(x)
    masks = probs > probs.median()  # any groups
    with torch.no_grad():
        y, z = sop.backbone.forward_groups(x, masks)
        scores = sop.selector.scores(z)
    assert torch.allclose(scores, 3.0 * (y - cnn.head.bias), atol=1e-4)
    w = sop.forward_masks(x, masks, torch.ones(masks.shape[:2])).group_weights
    best = y.argmax(1)  # (B, C): the group with the largest logit for each class
    assert (w.gather(1, best[:, None, :]) > 0).all()


@pytest.mark.parametrize("scale", [0.01, 1.0])
def test_weights_are_sparse_at_the_scale_that_separates_the_groups(scale):
    """Sparsity is a property of the scores' spread, not of the scale alone: with scores spread over more
    than 1 / s_s some group gets exactly zero, with a tiny spread none does."""
    sel = _selector(torch.eye(1), scale=scale)
    z = torch.tensor([[[0.0], [1.0], [3.0]]])
    w = sel(z)[0, :, 0]
    if scale == 1.0:
        assert w.tolist() == [0.0, 0.0, 1.0]
    else:
        # scores 0, 0.01, 0.03: threshold (0.04 − 1) / 3 = −0.32, every group weighted
        assert torch.allclose(w, torch.tensor([0.32, 0.33, 0.35]), atol=1e-6)


def test_the_whole_input_term_adds_the_same_score_to_every_class():
    """``s_ij = s_s <u_j, z_i> + s_x <z_x, z_i>`` at initialisation (W_q = W_k = W_x = I): with the
    class term equal for two groups, the group more like the whole input takes the weight."""
    sel = GroupSelector(torch.eye(2), 1.0, input_scale=2.0)
    z = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])  # groups 0 and 1 alike for the classes
    z_input = torch.tensor([[1.0, 1.0]])
    plain = GroupSelector(torch.eye(2), 1.0).scores(z)
    s = sel.scores(z, z_input)
    assert torch.allclose(s - plain, 2.0 * torch.tensor([[2.0, 2.0, 0.0]]).unsqueeze(-1).expand(1, 3, 2))
    # the input term tips the balance between groups the class term alone ranks the other way
    z2 = torch.tensor([[[1.0, 0.0], [0.9, 3.0]]])
    x2 = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(GroupSelector(torch.eye(2), 1.0)(z2)[0, :, 0], torch.tensor([0.55, 0.45]))
    w = sel(z2, x2)[0, :, 0]
    assert w.tolist() == [0.0, 1.0]
    assert sel.input_query.weight.requires_grad


def test_a_selector_with_the_input_term_refuses_to_run_without_the_input():
    sel = GroupSelector(torch.eye(2), 1.0, input_scale=1.0)
    z = torch.randn(2, 3, 2)
    with pytest.raises(InputError, match=r"expected its embedding of shape \(2, 2\) \(B, D\), got None"):
        sel(z)
    with pytest.raises(InputError, match=r"got \(3, 2\)"):
        sel(z, torch.randn(3, 2))
    assert not hasattr(GroupSelector(torch.eye(2), 1.0), "input_query")  # the paper's selector: no new weights


def test_sop_with_the_input_term_stays_exact_and_reads_the_whole_input(tmp_path):
    """The prediction is still Σ_i w_i c_i y_i to float precision; the weights now depend on the input
    outside the groups (through z_x) while the group logits do not; the checkpoint round-trips."""
    torch.manual_seed(0)
    sop = SumOfParts.from_backbone(tiny_cnn(), adapter="cnn", feature_layer="pool2", classifier="head",
                                   grid=(4, 4), num_groups=5, tau=0.25, selector_scale=3.0,
                                   selector_input_scale=0.5).eval()
    x = torch.randn(2, 1, 16, 16)
    masks = torch.zeros(2, 5, 16, dtype=torch.bool)
    masks[:, :, :4] = True  # every group is the first row of cells
    masks[:, 1:, 4:8] = torch.rand(2, 4, 4) > 0.5
    scale = torch.rand(2, 5)
    out = sop.forward_masks(x, masks, scale)
    expected = (out.group_weights * scale.unsqueeze(-1) * out.group_logits).sum(1)
    assert torch.allclose(out.logits, expected, atol=1e-5)
    with torch.no_grad():
        _, z = sop.backbone.forward_groups(x, masks)
        _, z_input = sop.backbone.forward_with_embedding(x)
        assert torch.allclose(out.group_weights, sop.selector(z, z_input), atol=1e-6)
    # change only what no group holds: the last two rows of cells (pixels 8..15 of each row)
    x2 = x.clone()
    x2[..., 8:, :] = torch.randn(2, 1, 8, 16)
    never = ~masks.any(1)
    assert never[:, 8:].all()
    out2 = sop.forward_masks(x2, masks, scale)
    assert torch.allclose(out2.group_logits, out.group_logits, atol=1e-5)
    assert not torch.allclose(out2.group_weights, out.group_weights, atol=1e-4)
    loaded = SumOfParts.from_pretrained(sop.save_pretrained(tmp_path / "ck")).eval()
    assert loaded.config.selector_input_scale == 0.5
    assert torch.equal(loaded(x).logits, sop(x).logits)
