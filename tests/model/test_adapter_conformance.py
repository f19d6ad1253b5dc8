"""The adapter conformance suite: every registered adapter family keeps the protocol SumOfParts relies on.

A new family registers itself in ``ADAPTERS``; ``test_every_registered_family_is_checked`` then fails
until a small instance of it is added to ``BUILDERS`` here, and every check below runs on it.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit

from sumofparts.adapters import (ADAPTERS, CAPABILITIES, BackboneAdapter, BertAdapter, CNNAdapter, IdentityHead,
                                 TabularAdapter, ViTAdapter, adapter_from_spec)


def _tabular() -> tuple[BackboneAdapter, Any]:
    torch.manual_seed(0)
    model = IdentityHead(torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Tanh()), 3).eval()
    return TabularAdapter(model, num_features=6), torch.randn(3, 6)


#: family -> a small adapter and a batch of three inputs
BUILDERS: dict[str, Callable[[], tuple[BackboneAdapter, Any]]] = {
    "vit": lambda: (ViTAdapter(tiny_vit()), torch.randn(3, 1, 16, 16)),
    "cnn": lambda: (CNNAdapter(tiny_cnn(), feature_layer="pool2", classifier="head", grid=(4, 4)),
                    torch.randn(3, 1, 16, 16)),
    "bert": lambda: (BertAdapter(tiny_bert(), special_token_ids=[0, 101, 102], mask_token_id=103), text_batch()),
    "tabular": _tabular,
}


def test_every_registered_family_is_checked():
    assert sorted(ADAPTERS) == sorted(BUILDERS)


@pytest.fixture(params=sorted(BUILDERS))
def built(request):
    adapter, x = BUILDERS[request.param]()
    assert type(adapter).family == request.param
    return adapter.eval(), x


def _random_groups(valid: torch.Tensor, G: int, seed: int = 0) -> torch.Tensor:
    """``(B, G, N)``: random groups of valid cells, each holding at least the first valid cell."""
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(valid.shape[0], G, valid.shape[1], generator=g) < 0.5) & valid[:, None, :]
    first = valid & (valid.long().cumsum(-1) == 1)
    return masks | first[:, None, :]


def test_cells_and_groups_have_the_protocol_shapes(built):
    adapter, x = built
    B, N = adapter.batch_size(x), adapter.num_cells(x)
    valid = adapter.valid_cells(x)
    assert valid.shape == (B, N) and valid.dtype == torch.bool and bool(valid.any(-1).all())
    adapter.validate(x)
    masks = _random_groups(valid, 5)
    with torch.no_grad():
        y, z = adapter.forward_groups(x, masks)
    C, D = adapter.classifier_weight.shape
    assert y.shape == (B, 5, C) and z.shape == (B, 5, D) and adapter.num_outputs == C
    # the embedding is what the classifier reads: y = z Uᵀ + bias
    bias = adapter.classifier.bias if adapter.classifier.bias is not None else torch.zeros(C)
    torch.testing.assert_close(y, z @ adapter.classifier_weight.T + bias, rtol=1e-4, atol=1e-5)
    # chunking the B·G masked inputs changes nothing
    adapter.group_batch_size = 2
    with torch.no_grad():
        y2, z2 = adapter.forward_groups(x, masks)
    torch.testing.assert_close(y2, y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z2, z, rtol=1e-4, atol=1e-5)


def test_a_group_of_every_valid_cell_is_the_whole_input(built):
    adapter, x = built
    valid = adapter.valid_cells(x)
    with torch.no_grad():
        y, _ = adapter.forward_groups(x, valid[:, None, :])
        full = adapter(x)
    torch.testing.assert_close(y[:, 0], full, rtol=1e-4, atol=1e-5)


def test_the_encoder_copy_is_trainable_and_the_backbone_frozen(built):
    adapter, x = built
    encoder = adapter.make_encoder()
    h = encoder(x)
    assert h.shape == (adapter.batch_size(x), adapter.num_cells(x), adapter.encoder_dim)
    assert all(p.requires_grad for p in encoder.parameters())
    assert not any(p.requires_grad for p in adapter.backbone_parameters())
    assert not {id(p) for p in encoder.parameters()} & {id(p) for p in adapter.backbone_parameters()}


def test_the_spec_rebuilds_the_same_adapter(built):
    adapter, x = built
    rebuilt = adapter_from_spec(adapter.spec(), model=adapter.model)
    assert type(rebuilt) is type(adapter) and rebuilt.spec() == adapter.spec()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), adapter(x))


def test_declared_capabilities_are_known_and_work(built):
    adapter, x = built
    assert set(adapter.capabilities) <= set(CAPABILITIES)
    B, N = adapter.batch_size(x), adapter.num_cells(x)
    if "cell_grid" in adapter.capabilities:
        assert adapter.cell_grid is not None and adapter.cell_grid[0] * adapter.cell_grid[1] == N
        up = adapter.masks_to_input(adapter.valid_cells(x)[:, None, :], x)
        assert up.shape == (B, 1, *x.shape[2:])
    else:
        assert adapter.cell_grid is None
    if "cls_attention" in adapter.capabilities:
        att = adapter.cls_attention(x)
        assert att.shape == (B, N) and bool((att >= 0).all())
    if "token_input" in adapter.capabilities:
        emb = adapter.input_embeddings(x)
        with torch.no_grad():
            torch.testing.assert_close(adapter.embedding_forward()(emb.embeddings, *emb.extra), adapter(x),
                                       rtol=1e-4, atol=1e-5)
    if "layer_map" in adapter.capabilities:
        assert adapter.layer_positions(adapter.default_layer()) > 0
    for name in adapter.named_layers():
        assert adapter.layer(name) is adapter.named_layers()[name]
