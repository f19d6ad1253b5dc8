"""``multirc``: MultiRC in the ERASER format with a BERT classifier (the authors' text task).

This loader needs data and weights that cannot be fetched on an offline machine; it is tested
on a tiny fixture written in the same format (``tests/tasks/test_online_multirc.py``).

Data (ERASER, http://www.eraserbenchmark.com/zipped/multirc.tar.gz)
    A directory holding ``docs/`` (one file per document, named by its docid: sentences one per
    line, tokens joined by single spaces; a ``docs.jsonl`` of ``{"docid", "document"}`` is
    accepted instead) and ``train.jsonl``, ``val.jsonl``, ``test.jsonl``, one annotation per line::

        {"annotation_id": "<docid>:<question>:<answer>", "classification": "True" | "False",
         "query": "<question> || <answer>", "query_type": null, "docids": null,
         "evidences": [[{"docid", "start_token", "end_token", "start_sentence", "end_sentence",
                         "text"}, ...], ...]}

    The document of an annotation is its ``docids[0]`` when given, else the ``annotation_id``
    before the first ``:`` (MultiRC's convention); ``start_token``/``end_token`` index the
    document's tokens flattened over sentences, end exclusive.
    Looked for in ``$SOP_MULTIRC_DIR``, then ``<cache_dir>/multirc``. When absent, the archive is
    downloaded into ``<cache_dir>/multirc`` unless ``SOP_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``; if
    that is impossible a ``FileNotFoundError`` says where it looked and how to install the data.

Items
    As the authors: the pair ``(passage, query)`` tokenised by the BERT tokenizer, padded to
    ``max_length`` (512), the *passage* truncated when too long (``truncation="only_first"``: the
    question and answer are always kept). Inputs ``{"input_ids", "attention_mask",
    "token_type_ids"}`` (``(L,)`` int64 each; the segment ids matter for a BERT sentence pair),
    target int64: **False = 0, True = 1** (``output_names == ["False", "True"]``): 1 means the
    answer is correct for the question, ERASER's ``classification`` (the order of the
    ``ClassLabel(names=["False", "True"])`` that the TFDS and Hugging Face ``eraser_multi_rc``
    builders, which the authors loaded, give it).

Order and subsets
    ERASER lists the answers of one question, and the questions of one passage, next to each
    other, so the first rows of a file are a few passages. Each split is therefore put in a
    seeded random order, ``numpy.random.default_rng([seed, k]).permutation`` (``k`` = 0 train,
    1 val, 2 test; ``seed`` is ``load_data``'s); ``size="small"`` keeps the first 64 / 16 / 16
    of that order, a uniform random subset, and any prefix of a split (the evaluation's first
    ``n`` test items) is a random sample too.

Ground truth
    ``TaskData.test_foreground``: ``(n_test, L)`` bool, True on the word pieces of passage words
    inside any evidence span (aligned through the fast tokenizer's word ids; evidence cut off by
    truncation is lost and counted in ``meta["evidence_tokens_truncated"]``). Every split's
    dataset also carries its ``evidence`` masks.

Backbone
    ``BertForSequenceClassification`` (eager attention) from ``backbone=`` / ``$SOP_MULTIRC_MODEL``
    (a local directory or a hub id), else ``<cache_dir>/multirc/model``, else the hub id
    ``bert-base-uncased`` (the authors fine-tuned ``bert-base-uncased`` on MultiRC; their
    checkpoint is not published). A checkpoint without a trained classifier head is fine-tuned
    on the train split (``train_if_missing``) and cached under ``<cache_dir>/multirc/``, with
    ``id2label = {0: "False", 1: "True"}`` written into its config. A checkpoint whose
    ``id2label`` names its classes must name them in this order (case and the synonyms
    incorrect/correct, wrong/right, no/yes do not matter); one that names them the other way round,
    or names other classes, is refused (:func:`check_label_order`). Generic names
    (``LABEL_0``, ``LABEL_1``) cannot be checked: index 1 is then taken to mean True, and a
    warning is logged.
    ``HF_HUB_OFFLINE`` is respected: offline, only local directories and the local HF cache work.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..io import atomic_directory, atomic_write_json, content_hash
from .base import Task, TaskData, register_task
from ..errors import InputError, InputTypeError, MissingFileError

__all__ = [
    "MultiRCTask",
    "MultiRCDataset",
    "MultiRCExample",
    "ERASER_URL",
    "DEFAULT_MODEL",
    "find_data_dir",
    "read_documents",
    "read_annotations",
    "encode_examples",
    "check_label_order",
    "split_order",
]

log = logging.getLogger(__name__)

ERASER_URL = "http://www.eraserbenchmark.com/zipped/multirc.tar.gz"
DEFAULT_MODEL = "bert-base-uncased"
MAX_LENGTH = 512
OUTPUT_NAMES = ["False", "True"]
LABELS = {"False": 0, "True": 1}
SPLIT_FILES = {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}
SMALL_SIZES = {"train": 64, "val": 16, "test": 16}
#: the random stream of each split's order: default_rng([seed, SPLIT_STREAM[split]])
SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
#: words a checkpoint's id2label may use for each class (lower case)
LABEL_WORDS = {0: {"false", "incorrect", "wrong", "no"}, 1: {"true", "correct", "right", "yes"}}


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("SOP_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _is_eraser_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "docs").is_dir() or (path / "docs.jsonl").is_file()) and all(
        (path / f).is_file() for f in SPLIT_FILES.values())


def _download(dest: Path, url: str = ERASER_URL, timeout: float = 30.0) -> Path:
    """Download the ERASER MultiRC archive and extract it atomically into ``dest``."""
    with tempfile.TemporaryDirectory(prefix="multirc-") as tmp:
        archive = Path(tmp) / "multirc.tar.gz"
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(archive, "wb") as fh:
            shutil.copyfileobj(resp, fh)
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "x", filter="data")
        found = [p for p in (Path(tmp) / "x").rglob("*") if _is_eraser_dir(p)] + (
            [Path(tmp) / "x"] if _is_eraser_dir(Path(tmp) / "x") else [])
        if not found:
            raise InputError(f"the archive from {url} holds no docs/ + train/val/test.jsonl directory")
        with atomic_directory(dest) as out:
            for item in found[0].iterdir():
                shutil.move(str(item), out / item.name)
    return dest


def find_data_dir(cache_dir: Path | None = None, data_dir: str | os.PathLike | None = None, *,
                  download: bool = True) -> Path:
    """The ERASER MultiRC directory: ``data_dir``, ``$SOP_MULTIRC_DIR``, ``<cache_dir>/multirc``.

    Downloads into ``<cache_dir>/multirc`` when nothing is found, unless offline
    (``SOP_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) or ``download=False``.
    """
    candidates: list[Path] = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    if os.environ.get("SOP_MULTIRC_DIR"):
        candidates.append(Path(os.environ["SOP_MULTIRC_DIR"]))
    if cache_dir is not None:
        candidates += [Path(cache_dir) / "multirc", Path(cache_dir) / "multirc" / "multirc"]
    for c in candidates:
        if _is_eraser_dir(c):
            return c
    why = "download not attempted: offline (SOP_OFFLINE / HF_HUB_OFFLINE set)" if _offline() else (
        "download not attempted (download=False)" if not download else "")
    if not why and cache_dir is not None:
        try:
            return _download(Path(cache_dir) / "multirc")
        except Exception as exc:  # noqa: BLE001  (network errors come in many types)
            why = f"download from {ERASER_URL} failed: {type(exc).__name__}: {exc}"
    elif not why:
        why = "download not attempted: no cache_dir to put it in"
    searched = ", ".join(str(c) for c in candidates) or "(nowhere: no data_dir, $SOP_MULTIRC_DIR or cache_dir)"
    target = Path(cache_dir) / "multirc" if cache_dir is not None else Path("<dir>")
    raise MissingFileError(
        "MultiRC (ERASER format) not found: expected a directory holding docs/ and train.jsonl, "
        f"val.jsonl, test.jsonl; searched {searched}; {why}. To install it: "
        f"`mkdir -p {target} && curl -L {ERASER_URL} | tar xz --strip-components=1 -C {target}` "
        "on a machine with network access, or point $SOP_MULTIRC_DIR at an extracted copy.")


def read_documents(data_dir: Path, docids: set[str] | None = None) -> dict[str, list[str]]:
    """``docid -> tokens`` (flattened over sentences), from ``docs/`` or ``docs.jsonl``."""
    data_dir = Path(data_dir)
    docs: dict[str, list[str]] = {}
    if (data_dir / "docs").is_dir():
        names = sorted(docids) if docids is not None else sorted(p.name for p in (data_dir / "docs").iterdir())
        for name in names:
            path = data_dir / "docs" / name
            if not path.is_file():
                raise MissingFileError(f"MultiRC document {name!r} is referenced but {path} does not exist")
            docs[name] = _tokens(path.read_text(encoding="utf-8"))
    else:
        with open(data_dir / "docs.jsonl", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    if docids is None or row["docid"] in docids:
                        docs[row["docid"]] = _tokens(row["document"])
        if docids is not None and set(docids) - set(docs):
            raise MissingFileError(f"MultiRC documents missing from docs.jsonl: {sorted(set(docids) - set(docs))[:5]}")
    return docs


def _tokens(text: str) -> list[str]:
    return [tok for line in text.splitlines() for tok in line.strip().split(" ") if tok]


class MultiRCExample(dict):
    """One annotation: annotation_id, docid, question, answer, query, label, evidence spans."""


def read_annotations(path: Path) -> list[MultiRCExample]:
    """Parse one ERASER ``*.jsonl`` file."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label = LABELS[str(row["classification"])]
                docids = row.get("docids") or []
                docid = docids[0] if docids else row["annotation_id"].split(":")[0]
                spans = sorted({(ev["docid"], int(ev["start_token"]), int(ev["end_token"]))
                                for group in row.get("evidences") or [] for ev in group})
            except (KeyError, ValueError, TypeError) as exc:
                raise InputError(f"{path}:{lineno}: not an ERASER MultiRC annotation ({exc!r})") from exc
            question, _, answer = row["query"].partition("||")
            out.append(MultiRCExample(annotation_id=row["annotation_id"], docid=docid, query=row["query"],
                                      question=question.strip(), answer=answer.strip(), label=label,
                                      evidence=spans))
    return out


class MultiRCDataset(Dataset):
    """Items ``({"input_ids", "attention_mask", "token_type_ids"}: (L,) int64, label int64)``.

    Attributes: ``input_ids``, ``attention_mask``, ``token_type_ids`` (N, L) int64; ``labels`` (N,);
    ``evidence`` (N, L) bool (token-level ground truth); ``annotation_ids``.
    """

    def __init__(self, encoded: dict[str, torch.Tensor], annotation_ids: list[str]):
        self.input_ids = encoded["input_ids"]
        self.attention_mask = encoded["attention_mask"]
        self.token_type_ids = encoded["token_type_ids"]
        self.labels = encoded["labels"]
        self.evidence = encoded["evidence"]
        self.annotation_ids = annotation_ids

    def __len__(self) -> int:
        return len(self.annotation_ids)

    def __getitem__(self, i: int):
        return ({"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i],
                 "token_type_ids": self.token_type_ids[i]}, self.labels[i])


def encode_examples(examples: Sequence[MultiRCExample], docs: dict[str, list[str]], tokenizer,
                    max_length: int = MAX_LENGTH) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Tokenise (passage, query) pairs and align the evidence spans to word pieces."""
    if not getattr(tokenizer, "is_fast", False):
        raise InputTypeError("the MultiRC loader needs a fast tokenizer (word ids align the evidence spans)")
    n = len(examples)
    ids = torch.zeros(n, max_length, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    evidence = torch.zeros(n, max_length, dtype=torch.bool)
    stats = {"passages_truncated": 0, "evidence_words": 0, "evidence_words_truncated": 0}
    for i, ex in enumerate(examples):
        words = docs[ex["docid"]]
        enc = tokenizer(words, ex["query"].split(), is_split_into_words=True, truncation="only_first",
                        max_length=max_length, padding="max_length")
        ids[i] = torch.tensor(enc["input_ids"])
        mask[i] = torch.tensor(enc["attention_mask"])
        types[i] = torch.tensor(enc["token_type_ids"])
        in_evidence = torch.zeros(len(words), dtype=torch.bool)
        for docid, lo, hi in ex["evidence"]:
            if docid != ex["docid"]:
                continue
            if not 0 <= lo < hi <= len(words):
                raise InputError(f"{ex['annotation_id']}: evidence tokens [{lo}, {hi}) outside the "
                                 f"document ({len(words)} tokens)")
            in_evidence[lo:hi] = True
        seq, wid = enc.sequence_ids(), enc.word_ids()
        kept = set()
        for t, (s, w) in enumerate(zip(seq, wid)):
            if s == 0 and w is not None:
                kept.add(w)
                if in_evidence[w]:
                    evidence[i, t] = True
        if len(kept) < len(words):
            stats["passages_truncated"] += 1
        stats["evidence_words"] += int(in_evidence.sum())
        stats["evidence_words_truncated"] += int(sum(1 for w in in_evidence.nonzero().flatten().tolist()
                                                     if w not in kept))
    labels = torch.tensor([ex["label"] for ex in examples], dtype=torch.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels,
            "evidence": evidence}, stats


def split_order(n: int, seed: int, split: str) -> np.ndarray:
    """The order of a split's ``n`` annotations: ``default_rng([seed, SPLIT_STREAM[split]]).permutation(n)``."""
    return np.random.default_rng([seed, SPLIT_STREAM[split]]).permutation(n)


def check_label_order(config: Any) -> str:
    """Check that a classifier's ``id2label`` means what the data's labels mean (0 False, 1 True).

    Returns ``"named"`` when the names say so, ``"assumed"`` for generic names (``LABEL_0``,
    ``LABEL_1``) that say nothing. Raises ``ValueError`` when the model has other than 2 outputs,
    names the classes the other way round, or names other classes.
    """
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if sorted(id2label) != [0, 1]:
        raise InputError(f"the MultiRC backbone must have 2 outputs (0 False, 1 True); its id2label is {id2label}")
    names = {i: id2label[i].strip().lower() for i in (0, 1)}
    if names == {0: "label_0", 1: "label_1"}:
        return "assumed"
    if all(names[i] in LABEL_WORDS[i] for i in (0, 1)):
        return "named"
    expected = "{0: 'False', 1: 'True'}"
    if all(names[i] in LABEL_WORDS[1 - i] for i in (0, 1)):
        raise InputError(f"the MultiRC backbone's id2label {id2label} puts True at index 0; the data's labels "
                         f"are {expected} (ERASER's classification: 1 = the answer is correct). Swap the "
                         "classifier's two rows (weight and bias) and its id2label, or use another checkpoint")
    raise InputError(f"the MultiRC backbone's id2label {id2label} does not name MultiRC's classes: expected "
                     f"{expected} (or the generic LABEL_0, LABEL_1)")



def _load_pretrained(kind: str, source: str, **kwargs):
    """from_pretrained with an error that says what to do when it is not available offline."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    loader = AutoTokenizer if kind == "tokenizer" else BertForSequenceClassification
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        local = Path(source).exists()
        raise MissingFileError(
            f"could not load the MultiRC {kind} from {source!r} "
            f"({'a local directory' if local else 'a hub id'}; HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')}): {exc}. Give a local directory holding a "
            "BertForSequenceClassification (config.json, model.safetensors) and its tokenizer "
            "(vocab.txt / tokenizer.json) with backbone=... or $SOP_MULTIRC_MODEL, or fetch "
            f"{DEFAULT_MODEL!r} once with network access (`pip install transformers` and "
            f"`python -c \"from transformers import AutoTokenizer, BertForSequenceClassification as B; "
            f"AutoTokenizer.from_pretrained('{DEFAULT_MODEL}'); B.from_pretrained('{DEFAULT_MODEL}')\"`) "
            "so that it is in the local Hugging Face cache.") from exc


@register_task
class MultiRCTask(Task):
    """MultiRC (ERASER) with BERT: the authors' text task; needs the data and a BERT (see module docs)."""

    name = "multirc"
    kind = "classification"
    description = "MultiRC (ERASER format), BERT sentence-pair classifier; evidence spans as token ground truth"
    # the authors' text recipe: 8 groups sampled of 16, token masks
    sop_defaults = {"num_heads": 1, "num_groups": 8, "num_candidates": 16, "tau": 0.2,
                    "group_gen_scale": 1.0, "group_sel_scale": 1.0}
    train_defaults = {"lr": 5e-6, "weight_decay": 0.01, "batch_size": 2, "epochs": 20,
                      "warmup_steps": 2000}

    def __init__(self, data_dir: str | os.PathLike | None = None, model: str | os.PathLike | None = None,
                 max_length: int = MAX_LENGTH):
        self.data_dir = data_dir
        self.model = str(model) if model is not None else None
        self.max_length = max_length

    def model_source(self, cache_dir: Path | None = None, backbone: str | None = None) -> str:
        for src in (backbone, self.model, os.environ.get("SOP_MULTIRC_MODEL")):
            if src:
                return str(src)
        if cache_dir is not None and (Path(cache_dir) / "multirc" / "model" / "config.json").is_file():
            return str(Path(cache_dir) / "multirc" / "model")
        return DEFAULT_MODEL

    def load_data(self, cache_dir: Path, *, size: str = "default", seed: int = 0,
                  progress: bool = True) -> TaskData:
        """The ERASER splits (train/val/test), each in a seeded random order; ``small`` keeps a
        seeded random subset of each (module docs)."""
        if size not in ("default", "small"):
            raise InputError(f"unknown size {size!r} for task 'multirc': expected 'default' or 'small'")
        root = find_data_dir(cache_dir, self.data_dir)
        source = self.model_source(cache_dir)
        tokenizer = _load_pretrained("tokenizer", source)
        splits: dict[str, MultiRCDataset] = {}
        stats: dict[str, Any] = {}
        for split, fname in SPLIT_FILES.items():
            examples = read_annotations(root / fname)
            order = split_order(len(examples), seed, split)
            if size == "small":
                order = order[:SMALL_SIZES[split]]
            examples = [examples[i] for i in order]
            docs = read_documents(root, {ex["docid"] for ex in examples})
            encoded, st = encode_examples(examples, docs, tokenizer, self.max_length)
            splits[split] = MultiRCDataset(encoded, [ex["annotation_id"] for ex in examples])
            stats[split] = st
        test = splits["test"]
        meta = {
            "source": str(root), "tokenizer": source, "size": size, "seed": seed, "max_length": self.max_length,
            "labels": dict(LABELS), "label_meaning": "1 (True): the answer is correct for the question",
            "order": "each split permuted by numpy default_rng([seed, k]) (k: train 0, val 1, test 2); "
                     "small: the first 64/16/16 of that order",
            "sizes": {k: len(v) for k, v in splits.items()},
            "true_fraction": {k: float(v.labels.float().mean()) if len(v) else 0.0 for k, v in splits.items()},
            "passages_truncated": {k: v["passages_truncated"] for k, v in stats.items()},
            "evidence_tokens_truncated": {k: v["evidence_words_truncated"] for k, v in stats.items()},
            "evidence_words": {k: v["evidence_words"] for k, v in stats.items()},
            "cells": "tokens", "foreground": "evidence word pieces (test split), (n_test, L) bool",
            "data_hash": content_hash({k: v.annotation_ids for k, v in splits.items()}),
        }
        return TaskData(name=self.name, kind="classification", train=splits["train"], val=splits["val"],
                        test=test, output_names=list(OUTPUT_NAMES), test_foreground=test.evidence.clone(),
                        meta=meta)

    def load_backbone(self, data: TaskData, cache_dir: Path, *, backbone: str | None = None,
                      train_if_missing: bool = True, progress: bool = True) -> nn.Module:
        source = self.model_source(cache_dir, backbone)
        model, info = _load_pretrained("model", source, num_labels=2, attn_implementation="eager",
                                       output_loading_info=True)
        untrained = [k for k in info.get("missing_keys", []) if k.startswith("classifier.")]
        if untrained:
            tuned = Path(cache_dir) / "multirc" / f"finetuned-{content_hash([source, data.meta.get('data_hash')])}"
            if (tuned / "config.json").is_file():
                model = _load_pretrained("model", str(tuned), attn_implementation="eager")
            elif not train_if_missing:
                raise MissingFileError(
                    f"the MultiRC backbone {source!r} has no trained classifier head ({untrained}) and no "
                    f"fine-tuned copy is cached at {tuned}; pass train_if_missing=True to fine-tune it")
            else:
                model = _finetune(model, data, progress=progress)
                model.config.id2label = dict(enumerate(OUTPUT_NAMES))
                model.config.label2id = {name: i for i, name in enumerate(OUTPUT_NAMES)}
                with atomic_directory(tuned) as tmp:
                    model.save_pretrained(tmp)
                    atomic_write_json(tmp / "sop_finetune.json", {"base": source, "data_hash": data.meta.get("data_hash")})
        if check_label_order(model.config) == "assumed":
            log.warning("multirc: the backbone %s names its classes LABEL_0, LABEL_1; taking index 1 to mean "
                        "True (the answer is correct), as in the data", source)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def make_adapter(self, model: nn.Module):
        from ..adapters import BertAdapter

        return BertAdapter(model)


def _finetune(model: nn.Module, data: TaskData, *, epochs: int = 1, lr: float = 2e-5, batch_size: int = 8,
              seed: int = 0, progress: bool = True) -> nn.Module:
    """Fine-tune every weight of a BERT classifier on ``data.train`` (AdamW, linear decay)."""
    from tqdm.auto import tqdm

    train = data.train
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(train) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, steps)))
    model.train()
    bar = tqdm(total=steps, desc="multirc: fine-tune BERT", disable=not progress)
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=gen).split(batch_size):
            n = int(train.attention_mask[idx].sum(1).max())
            out = model(input_ids=train.input_ids[idx, :n], attention_mask=train.attention_mask[idx, :n],
                        token_type_ids=train.token_type_ids[idx, :n], labels=train.labels[idx])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return model.eval()
