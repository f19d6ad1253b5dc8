"""Shared fixtures: tiny backbones of the three families, built offline from configs."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tiny_vit(num_labels: int = 3, image_size: int = 16, patch: int = 4, channels: int = 1, seed: int = 0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=image_size, patch_size=patch, num_channels=channels, hidden_size=32,
                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=num_labels)
    cfg._attn_implementation = "eager"
    return ViTForImageClassification(cfg).eval()


def tiny_bert(num_labels: int = 2, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    cfg._attn_implementation = "eager"
    return BertForSequenceClassification(cfg).eval()


def tiny_cnn(seed: int = 0):
    from sumofparts.tasks.synthetic import BarsCNN

    torch.manual_seed(seed)
    return BarsCNN().eval()


def last_robust_step(sidecar: dict) -> int:
    """The number N of the last ``robust_step_N`` record of a committed backbone's JSON sidecar."""
    return max(int(k.rsplit("_", 1)[1]) for k in sidecar if k.startswith("robust_step_"))


def text_batch(B: int = 3, L: int = 12, seed: int = 0):
    """[CLS] tokens... [SEP] [PAD]...: different lengths per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        n = L - 2 * b  # real tokens including CLS and SEP
        ids[b, 0] = 101
        ids[b, 1:n - 1] = torch.randint(1000 % 100 + 5, 100, (n - 2,), generator=g)
        ids[b, n - 1] = 102
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def vit():
    return tiny_vit()


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def cnn():
    return tiny_cnn()
