"""Loading a checkpoint never imports or executes anything a file names (issue 10, critical).

Crafted checkpoints ask ``from_pretrained`` to import a payload module (placed on sys.path and
in the working directory: importing it would write a marker file), to build
``sentence_transformers:SentenceTransformer`` with ``trust_remote_code``, a transformers class
outside the allow-list, or a model of hundreds of GB. Each must be refused with an
:class:`UnsafeCheckpointError` (or a :class:`ConfigError` for a mistyped value) that says how
to pass the model itself, and the payload must never run.
"""
from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import text_batch, tiny_bert, tiny_cnn, tiny_vit
from torch import nn

from sumofparts import SumOfParts
from sumofparts.adapters import BACKBONES, register_backbone
from sumofparts.errors import CheckpointError, ConfigError, CorruptFileError, SOPError, UnsafeCheckpointError
from sumofparts.io import load_tensors, save_tensors
from sumofparts.validation import Field

PAYLOAD = "sop_payload_marker"
SRC = Path(__file__).resolve().parents[2] / "src" / "sumofparts"


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """A module that writes a marker file when imported, on sys.path and in the working directory."""
    marker = tmp_path / "PWNED"
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
            "class Evil:\n    def __init__(self, **kw):\n"
            f"        pathlib.Path({str(marker)!r}).write_text('called')\n")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / f"{PAYLOAD}.py").write_text(code)
    (tmp_path / f"{PAYLOAD}.py").write_text(code)
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(PAYLOAD, None)
    yield marker
    sys.modules.pop(PAYLOAD, None)


def saved(tmp_path: Path, family: str) -> Path:
    if family == "cnn":
        sop = SumOfParts.from_backbone(tiny_cnn(), adapter="cnn", feature_layer="pool2", grid=(4, 4), num_groups=4,
                                       tau=0.25)
    elif family == "vit":
        sop = SumOfParts.from_backbone(tiny_vit(), adapter="vit", num_groups=4, tau=0.25)
    else:
        sop = SumOfParts.from_backbone(tiny_bert(), adapter="bert", num_groups=3, tau=0.3)
    return sop.save_pretrained(tmp_path / f"ck-{family}")


def edit_config(ck: Path, change) -> dict:
    cfg = json.loads((ck / "config.json").read_text())
    change(cfg)
    (ck / "config.json").write_text(json.dumps(cfg))
    return cfg


def assert_refused(ck: Path, marker: Path | None = None, match: str = "backbone=model",
                   error: type[Exception] = UnsafeCheckpointError) -> str:
    with pytest.raises(error, match=match) as info:
        SumOfParts.from_pretrained(ck)
    if marker is not None:
        assert not marker.exists(), "the payload ran"
        assert PAYLOAD not in sys.modules, "the payload module was imported"
    return str(info.value)


# --------------------------------------------------------------------------- nothing is imported

@pytest.mark.parametrize("change", [
    # the 0.1 layout: factory = "module:Class"
    lambda c: c["backbone"].update(factory=f"{PAYLOAD}:Evil", factory_kwargs={}),
    lambda c: c["backbone"].update(factory=f"{PAYLOAD}:Evil", architecture=None),
    # the current layout: a registered name is expected; a module path is not one
    lambda c: c["backbone"].update(architecture=f"{PAYLOAD}:Evil"),
    lambda c: c["backbone"].update(architecture=f"{PAYLOAD}.Evil"),
    lambda c: c["backbone"].update(architecture=PAYLOAD),
    # an unregistered class recorded for messages only
    lambda c: c["backbone"].update(architecture=None, class_name=f"{PAYLOAD}.Evil"),
], ids=["legacy-factory", "legacy-factory-null-arch", "arch-colon", "arch-dotted", "arch-module", "class-name"])
def test_a_payload_module_named_by_a_cnn_checkpoint_is_never_imported(tmp_path, payload, change):
    ck = saved(tmp_path, "cnn")
    edit_config(ck, change)
    message = assert_refused(ck, payload)
    assert "SumOfParts.from_pretrained(directory, backbone=model)" in message


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_a_payload_module_named_as_a_transformers_class_is_never_imported(tmp_path, payload, family):
    ck = saved(tmp_path, family)
    for name in (PAYLOAD, f"{PAYLOAD}:Evil", f"{PAYLOAD}.Evil"):
        edit_config(ck, lambda c: c["backbone"].update(model_class=name))
        assert_refused(ck, payload, match="not one this adapter builds")


def test_sentence_transformers_with_trust_remote_code_is_refused(tmp_path):
    had = "sentence_transformers" in sys.modules
    ck = saved(tmp_path, "cnn")
    edit_config(ck, lambda c: c["backbone"].update(
        factory="sentence_transformers:SentenceTransformer",
        factory_kwargs={"model_name_or_path": str(tmp_path), "trust_remote_code": True}))
    assert_refused(ck, match="factory string 'sentence_transformers:SentenceTransformer'")
    assert had or "sentence_transformers" not in sys.modules
    # in the current layout as a "registered name"

    def as_name(c):
        del c["backbone"]["factory"], c["backbone"]["factory_kwargs"]
        c["backbone"].update(architecture="sentence_transformers:SentenceTransformer",
                             architecture_kwargs={"trust_remote_code": True})

    edit_config(ck, as_name)
    assert_refused(ck, match="not a registered backbone class")
    assert had or "sentence_transformers" not in sys.modules


@pytest.mark.parametrize("model_class", ["AutoModel", "AutoModelForSequenceClassification", "BertModel",
                                         "GPT2LMHeadModel", "ViTForImageClassification", "PreTrainedModel"])
def test_transformers_classes_outside_the_allow_list_are_refused(tmp_path, model_class):
    ck = saved(tmp_path, "bert")  # the BERT adapter builds BertForSequenceClassification only
    edit_config(ck, lambda c: c["backbone"].update(model_class=model_class))
    message = assert_refused(ck, match="not one this adapter builds")
    assert "allowed: BertForSequenceClassification" in message


@pytest.mark.parametrize("key, value", [("trust_remote_code", True),
                                        ("auto_map", {"AutoModel": f"{PAYLOAD}.Evil"}),
                                        ("quantization_config", {"load_in_8bit": True}),
                                        ("_attn_implementation", "flash_attention_2")])
def test_hf_config_keys_the_loader_does_not_know_are_refused(tmp_path, payload, key, value):
    ck = saved(tmp_path, "vit")
    edit_config(ck, lambda c: c["backbone"]["hf_config"].update({key: value}))
    assert key in assert_refused(ck, payload, match="not checked for")


def test_a_config_of_another_model_type_is_refused(tmp_path):
    ck = saved(tmp_path, "vit")
    edit_config(ck, lambda c: c["backbone"]["hf_config"].update(model_type="bert"))
    assert_refused(ck, match="model_type must be 'vit'")


# --------------------------------------------------------------------------- sizes are bounded

@pytest.mark.parametrize("family, change", [
    ("vit", {"hidden_size": 16384, "num_hidden_layers": 256, "intermediate_size": 65536,
             "num_attention_heads": 128}),
    ("vit", {"image_size": 4096, "patch_size": 1, "hidden_size": 4096, "num_attention_heads": 64}),
    ("bert", {"vocab_size": 2_000_000, "hidden_size": 16384, "num_attention_heads": 128}),
    ("bert", {"max_position_embeddings": 131072, "hidden_size": 16384, "num_attention_heads": 128}),
])
def test_huge_transformers_are_refused_before_anything_is_allocated(tmp_path, family, change):
    ck = saved(tmp_path, family)
    edit_config(ck, lambda c: c["backbone"]["hf_config"].update(change))
    t0 = time.perf_counter()
    assert_refused(ck, match=r"parameters, more than the 1e\+09")
    assert time.perf_counter() - t0 < 5  # refused from the config alone, nothing built


@pytest.mark.parametrize("family, change, match", [
    ("vit", {"num_hidden_layers": 10**6}, r"num_hidden_layers must be an integer in \[1, 256\]"),
    ("vit", {"hidden_size": "768"}, "hidden_size must be an integer"),
    ("vit", {"hidden_act": "os.system"}, "hidden_act must be one of"),
    ("vit", {"image_size": 30, "patch_size": 4}, "multiple of patch_size"),
    ("bert", {"num_labels": 3}, "disagrees with id2label"),
    ("bert", {"id2label": {"0": "a", "7": "b"}}, "exactly the class ids"),
    ("bert", {"is_decoder": True}, "is_decoder must be one of false"),
    ("bert", {"layer_norm_eps": float("nan")}, "layer_norm_eps must be a finite number"),
])
def test_transformers_config_values_are_typed_and_bounded(tmp_path, family, change, match):
    ck = saved(tmp_path, family)
    edit_config(ck, lambda c: c["backbone"]["hf_config"].update(change))
    assert_refused(ck, match=match, error=SOPError)


@pytest.mark.parametrize("change, match", [
    ({"architecture_kwargs": {"num_classes": 10**9}}, r"num_classes must be an integer in \[1, 100000\]"),
    ({"architecture_kwargs": {"num_classes": 4, "os_command": "rm -rf /"}}, r"unknown keys \['os_command'\]"),
    ({"architecture_kwargs": {"num_classes": "4"}}, "num_classes must be an integer"),
    ({"input_shape": [1, 16384, 16384]}, "input_shape must"),
    ({"grid": [10**6, 4]}, "grid must be a list of 2 integers"),
    ({"trust_remote_code": True}, r"unknown keys \['trust_remote_code'\]"),
])
def test_registered_cnn_arguments_are_checked_against_its_schema(tmp_path, change, match):
    ck = saved(tmp_path, "cnn")
    edit_config(ck, lambda c: c["backbone"].update(change))
    assert_refused(ck, match=match, error=ConfigError)


# --------------------------------------------------------------------------- what does load

def test_the_cnn_spec_names_the_registered_class_not_a_module(tmp_path):
    cfg = json.loads((saved(tmp_path, "cnn") / "config.json").read_text())
    assert cfg["backbone"]["architecture"] == "bars-cnn"
    assert "factory" not in cfg["backbone"]
    assert cfg["format_version"] == 2


def test_a_legacy_checkpoint_of_a_project_cnn_loads_without_importing(tmp_path):
    torch.manual_seed(0)
    sop = SumOfParts.from_backbone(tiny_cnn(), adapter="cnn", feature_layer="pool2", grid=(4, 4), num_groups=4,
                                   tau=0.25).eval()
    ck = sop.save_pretrained(tmp_path / "ck")

    def to_legacy(c):  # what sumofparts 0.1 wrote
        b = c["backbone"]
        b["factory"] = "sumofparts.tasks.synthetic:BarsCNN"
        b["factory_kwargs"] = b.pop("architecture_kwargs")
        del b["architecture"], b["class_name"]
        del c["format_version"]

    edit_config(ck, to_legacy)
    x = torch.randn(2, 1, 16, 16)
    loaded = SumOfParts.from_pretrained(ck).eval()
    assert torch.equal(loaded(x).logits, sop(x).logits)


def test_an_unregistered_cnn_needs_the_model_and_then_loads(tmp_path):
    class PlainCNN(nn.Module):  # not registered: the checkpoint records architecture null
        input_shape = (1, 8, 8)

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Linear(4 * 64, 3)

        def forward(self, x):
            return self.head(torch.flatten(torch.relu(self.conv(x)), 1))

    torch.manual_seed(0)
    sop = SumOfParts.from_backbone(PlainCNN(), adapter="cnn", feature_layer="conv", grid=(4, 4), num_groups=4,
                                   tau=0.25).eval()
    ck = sop.save_pretrained(tmp_path / "ck")
    assert json.loads((ck / "config.json").read_text())["backbone"]["architecture"] is None
    message = assert_refused(ck, match="is not a registered backbone")
    assert "PlainCNN" in message and "register_backbone" in message
    loaded = SumOfParts.from_pretrained(ck, backbone=PlainCNN()).eval()  # the advice works
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x).logits, sop(x).logits)


def test_a_user_registered_cnn_rebuilds_from_the_file(tmp_path):
    @register_backbone("test-user-cnn", {"width": Field(int, min=1, max=64)})
    class UserCNN(nn.Module):
        input_shape = (1, 8, 8)

        def __init__(self, width: int = 4):
            super().__init__()
            self.init_kwargs = {"width": width}
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.head = nn.Linear(width * 64, 2)

        def forward(self, x):
            return self.head(torch.flatten(self.conv(x), 1))

    try:
        sop = SumOfParts.from_backbone(UserCNN(width=5), adapter="cnn", feature_layer="conv", grid=(4, 4),
                                       num_groups=3, tau=0.25).eval()
        ck = sop.save_pretrained(tmp_path / "ck")
        loaded = SumOfParts.from_pretrained(ck).eval()
        assert loaded.backbone.model.conv.out_channels == 5
        x = torch.randn(2, 1, 8, 8)
        assert torch.equal(loaded(x).logits, sop(x).logits)
    finally:
        BACKBONES.pop("test-user-cnn", None)


def test_a_refused_transformers_checkpoint_loads_with_backbone(tmp_path):
    ck = saved(tmp_path, "bert")
    edit_config(ck, lambda c: c["backbone"].update(model_class="SomethingElse"))
    assert_refused(ck)
    loaded = SumOfParts.from_pretrained(ck, backbone=tiny_bert(seed=1))  # the weights come from the file
    original = SumOfParts.from_pretrained(saved(tmp_path / "again", "bert"))
    x = text_batch()
    assert torch.equal(loaded.eval()(x).logits, original.eval()(x).logits)


# --------------------------------------------------------------------------- the config and the weights

@pytest.mark.parametrize("field", ["tau", "generator_scale", "selector_scale", "num_groups", "num_heads",
                                   "sequential_heads", "blur_kernel", "task", "backbone"])
def test_a_missing_computation_field_is_named(tmp_path, field):
    ck = saved(tmp_path, "vit")
    edit_config(ck, lambda c: c.pop(field))
    assert_refused(ck, match=rf"missing fields \['{field}'\]", error=ConfigError)


@pytest.mark.parametrize("field, value, match", [
    ("sequential_heads", "no", "sequential_heads must be a boolean"),
    ("num_groups", 2.5, "num_groups must be an integer"),
    ("num_groups", "4", "num_groups must be an integer"),
    ("tau", "0.25", "tau must be a finite number"),
    ("generator_scale", float("nan"), "generator_scale must be a finite number"),
    ("blur_sigma", float("inf"), "blur_sigma must be a finite number"),
    ("generator_init_noise", float("-inf"), "generator_init_noise must be a finite number"),
    ("format_version", 7, "format_version 7 is not one this version"),
])
def test_a_mistyped_config_field_is_named(tmp_path, field, value, match):
    ck = saved(tmp_path, "vit")
    edit_config(ck, lambda c: c.update({field: value}))
    message = assert_refused(ck, match=match, error=ConfigError)
    assert "config.json" in message


def test_weights_of_another_dtype_are_refused(tmp_path):
    ck = saved(tmp_path, "vit")
    tensors = load_tensors(ck / "model.safetensors")
    name = "selector.class_queries"
    tensors[name] = tensors[name].to(torch.int64)
    save_tensors(ck / "model.safetensors", tensors)
    message = assert_refused(ck, match="dtype mismatches", error=CheckpointError)
    assert f"{name}: checkpoint torch.int64 vs model torch.float32" in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_truncated_or_corrupt_weights_file_is_named(tmp_path, damage):
    ck = saved(tmp_path, "vit")
    path = ck / "model.safetensors"
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 2], "garbage": b"\x00\xff" * 100, "empty": b""}[damage])
    message = assert_refused(ck, match="not a readable safetensors file", error=CorruptFileError)
    assert str(path) in message


def test_a_config_that_is_not_json_is_named(tmp_path):
    ck = saved(tmp_path, "vit")
    (ck / "config.json").write_text('{"tau": 0.2,')
    assert_refused(ck, match=r"config.json is not valid JSON", error=CorruptFileError)


# --------------------------------------------------------------------------- the source itself

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            yield name, node


def test_the_package_imports_no_module_named_at_run_time_and_unpickles_nothing():
    """No ``import_module``/``__import__`` at all (every module the package uses is named in an import
    statement); ``torch.load`` only with ``weights_only=True``; no pickle at all."""
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, node in _calls(tree):
            assert name not in ("import_module", "__import__"), f"{rel}:{node.lineno} imports a module by a name"
            if name == "load" and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{rel}:{node.lineno} torch.load without weights_only=True"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names), \
                    f"{rel}:{node.lineno} imports a pickle module"


def test_a_bagnet_file_cannot_ask_for_any_size(tmp_path):
    from sumofparts.attribution.bagnet import BagNetModel

    model = BagNetModel(1, 3, (16, 16), (4, 4), width=8, depth=1)
    path = model.save(tmp_path / "bagnet.safetensors")
    assert BagNetModel.load(path).init_kwargs == model.init_kwargs
    save_tensors(path, load_tensors(path), metadata={"bagnet": json.dumps({**model.init_kwargs, "width": 10**7})})
    with pytest.raises(ConfigError, match=r"width must be an integer in \[1, 4096\]"):
        BagNetModel.load(path)
