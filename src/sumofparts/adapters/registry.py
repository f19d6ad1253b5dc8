"""What a checkpoint may ask :meth:`SumOfParts.from_pretrained` to build: an explicit allow-list.

A checkpoint's ``config.json`` says which backbone it wraps. Rebuilding that backbone from
the file alone is only ever done through this module, and only for

* **registered backbone classes**: PyTorch modules that registered themselves with
  :func:`register_backbone` under a name and a declared argument schema (names, types,
  bounds). The project's own CNNs are registered (``cosmology-cnn``, ``bars-cnn``,
  ``fashion-cnn``); a user may register theirs in their own code. The file names the
  registered *name*; its arguments are checked against the schema before the class is
  called.
* **allow-listed Hugging Face classes** (:class:`HFModelSchema`): the classes the adapters
  support (``ViTForImageClassification``, ``BertForSequenceClassification``), each with a
  table of the config fields it reads (typed and bounded), the fields known to change
  nothing (dropped), a cross-field check and a parameter-count estimate bounded by
  :data:`MAX_BACKBONE_PARAMETERS`, so that a crafted config cannot ask for hundreds of GB.

Nothing named by a file is ever imported: there is no ``importlib`` here, a name read
from a file is only ever a key into these dictionaries. Anything else is refused with
:class:`~sumofparts.errors.UnsafeCheckpointError`, whose message says how to pass the
model itself: ``SumOfParts.from_pretrained(directory, backbone=model)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from ..errors import ConfigError, UnsafeCheckpointError
from ..validation import Field, check_fields

__all__ = [
    "register_backbone",
    "registered_name",
    "build_backbone",
    "BackboneEntry",
    "BACKBONES",
    "LEGACY_FACTORIES",
    "HFModelSchema",
    "build_hf_model",
    "HF_ENCODER_FIELDS",
    "HF_INERT_KEYS",
    "MAX_BACKBONE_PARAMETERS",
    "pass_backbone_hint",
    "without_inert_keys",
]

#: the largest backbone (in parameters) that a checkpoint may ask to build: 1e9 float32
#: parameters are 4 GB (ViT-H has 0.63e9, BERT-large 0.34e9). A larger model can still be
#: used: build it yourself and pass it with ``backbone=``.
MAX_BACKBONE_PARAMETERS = 1_000_000_000


def pass_backbone_hint(what: str = "the backbone") -> str:
    return (f"build {what} yourself and pass it: SumOfParts.from_pretrained(directory, backbone=model) "
            "(its weights are then filled from model.safetensors); see docs/security.md")


# --------------------------------------------------------------------------- registered classes

@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone class: its name, the class and the schema of its arguments."""

    name: str
    cls: type[nn.Module]
    args: Mapping[str, Field]


#: registered backbone classes by name
BACKBONES: dict[str, BackboneEntry] = {}

#: ``module:Class`` factory strings written by sumofparts 0.1 for its own CNNs -> registered
#: names. A checkpoint with one of these strings loads without importing anything (the
#: string is only a key here); any other factory string is refused.
LEGACY_FACTORIES: dict[str, str] = {
    "sumofparts.tasks.cosmology_cnn:CosmoCNN": "cosmology-cnn",
    "sumofparts.tasks.synthetic:BarsCNN": "bars-cnn",
    "sumofparts.tasks.fashion:FashionCNN": "fashion-cnn",
}


def register_backbone(name: str, args: Mapping[str, Field]) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an ``nn.Module`` class buildable from a checkpoint under ``name``.

    ``args``: the schema of the constructor's keyword arguments (every argument the
    checkpoint may pass, with its type and bounds). The model records the arguments it
    was built with in ``self.init_kwargs`` (what the CNN adapter's spec saves).

    >>> @register_backbone("my-cnn", {"num_classes": Field(int, min=1, max=1000)})
    ... class MyCNN(nn.Module): ...
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a backbone's registered name must be a non-empty string, got {name!r}")

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ConfigError(f"register_backbone expects an nn.Module class, got {cls!r}")
        old = BACKBONES.get(name)
        if old is not None and old.cls is not cls and old.cls.__qualname__ != cls.__qualname__:
            raise ConfigError(f"backbone name {name!r} is already registered for {old.cls.__qualname__}")
        BACKBONES[name] = BackboneEntry(name, cls, dict(args))
        return cls

    return decorate


def _load_builtin_backbones() -> None:
    """Register the project's own backbone classes (plain imports of fixed modules)."""
    from ..tasks import cosmology_cnn, fashion, synthetic  # noqa: F401  (they register on import)


def registered_name(model: nn.Module) -> str | None:
    """The registered name of ``model``'s class, or ``None`` when it is not registered."""
    _load_builtin_backbones()
    for entry in BACKBONES.values():
        if type(model) is entry.cls:
            return entry.name
    return None


def build_backbone(name: Any, kwargs: Any, *, where: str = "") -> nn.Module:
    """Build the registered backbone ``name`` with ``kwargs`` checked against its schema."""
    _load_builtin_backbones()
    if not isinstance(name, str) or name not in BACKBONES:
        raise UnsafeCheckpointError(
            f"{where}the backbone {name!r} is not a registered backbone class (registered: "
            f"{', '.join(sorted(BACKBONES)) or 'none'}); refusing to build it. "
            + pass_backbone_hint())
    entry = BACKBONES[name]
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{where}the arguments of backbone {name!r} must be a JSON object, got "
                          f"{type(kwargs).__name__}")
    checked = check_fields(kwargs, entry.args, where=f"{where}backbone {name!r} argument ")
    return entry.cls(**checked)


# --------------------------------------------------------------------------- Hugging Face classes

_ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python", "gelu_accurate",
                "quick_gelu", "relu", "relu6", "leaky_relu", "silu", "swish", "tanh", "sigmoid", "mish",
                "linear")


def _label_map(values: dict[str, Any]) -> str | None:
    if not values or len(values) > 100_000:
        return "be a non-empty mapping of at most 100000 class ids to names"
    if not all(isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in values.items()):
        return 'map class ids ("0", "1", ...) to names'
    if sorted(int(k) for k in values) != list(range(len(values))):
        return "map exactly the class ids 0..n-1 to names"
    return None


def _label2id(values: dict[str, Any]) -> str | None:
    if len(values) > 100_000 or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                         for k, v in values.items()):
        return "map class names to integer ids"
    return None


#: config fields shared by the BERT and ViT encoders (what the models read; all typed and bounded)
HF_ENCODER_FIELDS: dict[str, Field] = {
    "hidden_size": Field(int, min=1, max=16_384),
    "num_hidden_layers": Field(int, min=1, max=256),
    "num_attention_heads": Field(int, min=1, max=1024),
    "intermediate_size": Field(int, min=1, max=65_536),
    "hidden_act": Field(str, choices=_ACTIVATIONS),
    "hidden_dropout_prob": Field(float, min=0, max=1),
    "attention_probs_dropout_prob": Field(float, min=0, max=1),
    "layer_norm_eps": Field(float, gt=0, max=1),
    "initializer_range": Field(float, min=0, max=10, required=False),
    "id2label": Field(dict, check=_label_map),
    "label2id": Field(dict, check=_label2id, required=False),
    "num_labels": Field(int, min=1, max=100_000, required=False),
    "chunk_size_feed_forward": Field(int, min=0, max=65_536, required=False),
    "is_encoder_decoder": Field(bool, choices=(False,), required=False),
    "is_decoder": Field(bool, choices=(False,), required=False),
    "add_cross_attention": Field(bool, choices=(False,), required=False),
    "pruned_heads": Field(dict, check=lambda d: None if not d else "be empty (pruned models are not supported)",
                          required=False),
}

#: keys of a Hugging Face config that change nothing in an encoder classifier's forward as the
#: adapters run it (bookkeeping, generation settings, output switches the adapters set
#: themselves). They are dropped; any key neither here nor in a model's table is refused.
HF_INERT_KEYS = frozenset({
    "transformers_version", "architectures", "_name_or_path", "_commit_hash", "dtype", "torch_dtype",
    "use_bfloat16", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "tf_legacy_loss", "finetuning_task", "tokenizer_class", "prefix", "bos_token_id", "eos_token_id",
    "sep_token_id", "decoder_start_token_id", "task_specific_params", "problem_type", "use_cache",
    "tie_word_embeddings", "tie_encoder_decoder", "cross_attention_hidden_size", "gradient_checkpointing",
    "_attn_implementation_autoset", "output_past", "use_return_dict",
    # generation settings of transformers 4.x configs (unused by an encoder classifier)
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens",
})


def without_inert_keys(hf_config: Any) -> Any:
    """A Hugging Face config dict without the keys of :data:`HF_INERT_KEYS`."""
    if not isinstance(hf_config, Mapping):
        return hf_config
    return {k: v for k, v in hf_config.items() if k not in HF_INERT_KEYS}


@dataclass(frozen=True)
class HFModelSchema:
    """An allow-listed Hugging Face model class and the config fields it may be built with.

    Attributes:
        class_name: e.g. ``"ViTForImageClassification"`` (the spec's ``model_class``).
        model_type: the config's ``model_type`` (e.g. ``"vit"``).
        fields: the config fields the model reads, typed and bounded (required ones must be
            present in the file).
        load: ``() -> (model class, config class)``, explicit imports of the two classes.
        check: cross-field rule ``check(config) -> None | message``.
        parameters: estimate of the parameter count from the checked config.
    """

    class_name: str
    model_type: str
    fields: Mapping[str, Field]
    load: Callable[[], tuple[type, type]]
    check: Callable[[dict[str, Any]], str | None]
    parameters: Callable[[dict[str, Any]], int]


def build_hf_model(model_class: Any, hf_config: Any, allowed: Mapping[str, HFModelSchema], *,
                   where: str = "") -> nn.Module:
    """Build an allow-listed Hugging Face model from a checked config (eager attention)."""
    if not isinstance(model_class, str) or model_class not in allowed:
        raise UnsafeCheckpointError(
            f"{where}backbone.model_class {model_class!r} is not one this adapter builds from a checkpoint "
            f"(allowed: {', '.join(sorted(allowed))}); refusing to build it. " + pass_backbone_hint())
    schema = allowed[model_class]
    if not isinstance(hf_config, Mapping):
        raise ConfigError(f"{where}backbone.hf_config must be a JSON object, got {type(hf_config).__name__}")
    data = dict(hf_config)
    model_type = data.pop("model_type", None)
    if model_type != schema.model_type:
        raise UnsafeCheckpointError(f"{where}backbone.hf_config.model_type must be {schema.model_type!r} for "
                                    f"{model_class}, got {model_type!r}")
    unknown = sorted(str(k) for k in data if k not in schema.fields and k not in HF_INERT_KEYS)
    if unknown:
        raise UnsafeCheckpointError(
            f"{where}backbone.hf_config has keys that {model_class} is not checked for: {unknown}; refusing to build it "
            "(a key this loader does not know might change the model). " + pass_backbone_hint())
    checked = check_fields({k: v for k, v in data.items() if k in schema.fields}, schema.fields,
                           where=f"{where}backbone.hf_config.", require=True)
    if "num_labels" in checked and checked["num_labels"] != len(checked["id2label"]):
        raise ConfigError(f"{where}backbone.hf_config.num_labels ({checked['num_labels']}) disagrees with id2label "
                          f"({len(checked['id2label'])} classes)")
    checked.pop("num_labels", None)
    problem = schema.check(checked)
    if problem:
        raise ConfigError(f"{where}backbone.hf_config: {problem}")
    n = schema.parameters(checked)
    if n > MAX_BACKBONE_PARAMETERS:
        raise UnsafeCheckpointError(
            f"{where}backbone.hf_config describes a {model_class} of about {n:.3g} parameters, more than the "
            f"{MAX_BACKBONE_PARAMETERS:.0e} a checkpoint may ask to build. " + pass_backbone_hint("the model"))
    checked["id2label"] = {int(k): v for k, v in checked["id2label"].items()}
    model_cls, config_cls = schema.load()
    config = config_cls(**checked)
    config._attn_implementation = "eager"
    model: nn.Module = model_cls(config)
    return model


def encoder_parameters(cfg: dict[str, Any]) -> int:
    """Parameters of ``num_hidden_layers`` BERT/ViT encoder layers (attention, MLP, two LayerNorms)."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    count: int = cfg["num_hidden_layers"] * (4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h)
    return count
