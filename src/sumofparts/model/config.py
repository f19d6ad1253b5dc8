"""The SOP model's configuration, saved as ``config.json`` beside the weights.

Every field is declared once in :data:`SOP_CONFIG_FIELDS` (type, range, choices), and
that table is what checks a config built in Python (``SOPConfig(tau=0.2)``), one read
from a checkpoint (:meth:`SOPConfig.from_file_dict`, strict: every field that changes
the computation must be present, and the file carries a format version) and one built
from command-line overrides (``--set tau=0.2``). To add a field: add it to the
dataclass *and* a row to the table (a test checks that the two agree).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..validation import Field, check_fields, check_value, reject_unknown_keys

__all__ = ["SOPConfig", "SOP_CONFIG_FIELDS", "FORMAT_VERSION"]

#: version of the ``config.json`` layout written by :meth:`SOPConfig.to_file_dict`. Files
#: without ``format_version`` were written before it existed (version 0: without ``base_value``
#: and ``candidate_queries``); version 1 files lack ``selector_input_scale`` (added in 2). Older
#: files read as what they computed: the missing fields take the values of that time.
FORMAT_VERSION = 2
_READABLE_VERSIONS = (0, 1, 2)


def _odd_or_zero(k: int) -> str | None:
    return None if k == 0 or k % 2 == 1 else "be 0 (no blur) or a positive odd size"


#: one row per SOPConfig field: its type and range. Every field changes the computation,
#: so every one is required in a checkpoint's config.json.
SOP_CONFIG_FIELDS: dict[str, Field] = {
    "num_groups": Field(int, min=1, max=100_000, doc="G, groups kept per input"),
    "num_heads": Field(int, min=1, max=256, doc="K, attention heads of the generator"),
    "tau": Field(float, gt=0, max=1, doc="fraction of the cells in a group"),
    "generator_scale": Field(float, gt=0, max=1e6, doc="s_g, scale of the generator's attention logits"),
    "generator_dim": Field(int, min=1, max=65_536, optional=True, doc="width of the generator's projections"),
    "generator_norm": Field(bool, doc="LayerNorm the cell embeddings"),
    "generator_init": Field(str, choices=("identity", "random"), doc="initialisation of the projections"),
    "generator_init_noise": Field(float, min=0, max=1e3, doc="noise of the identity start"),
    "blur_kernel": Field(int, min=0, max=99, check=_odd_or_zero, doc="Gaussian blur size (0: none)"),
    "blur_sigma": Field(float, min=1e-3, max=1e3, doc="Gaussian blur standard deviation, in cells"),
    "selector_scale": Field(float, gt=0, max=1e6, doc="s_s, scale of the selector's scores"),
    "selector_input_scale": Field(float, min=0, max=1e6,
                                  doc="s_x, scale of the selector's whole-input term (0: none, the paper)"),
    "task": Field(str, choices=("classification", "regression"), doc="loss and prediction kind"),
    "sequential_heads": Field(bool, doc="train the heads one after another"),
    "candidate_queries": Field(str, choices=("paper", "spread"),
                               doc="which (head, query cell) candidates become the G groups"),
    "base_value": Field(list, item=float, optional=True, max_length=100_000,
                        doc="b, the prediction's starting point, one value per output (null: 0)"),
    "backbone": Field(dict, doc="the adapter's spec (filled by SumOfParts)"),
}


@dataclass
class SOPConfig:
    """Hyper-parameters of a Sum-of-Parts model.

    Attributes:
        num_groups: G, groups kept per input (20 for ImageNet in the paper).
        num_heads: K, attention heads of the group generator (each gives N candidates).
        tau: fraction of cells in a group, in (0, 1]; a group holds exactly floor(tau*N) cells.
        generator_scale: s_g, the fixed scale of the generator's attention logits (no 1/sqrt(d)).
        generator_dim: width of the generator's query/key projections (None: the encoder's width).
        generator_norm: LayerNorm the cell embeddings before the projections (beyond the paper:
            it makes ``generator_scale`` comparable across backbones).
        generator_init: ``"identity"`` (W_q = W_k = I + noise, a peaked start with c > 0; beyond the
            paper) or ``"random"`` (PyTorch's default, as the authors).
        generator_init_noise: size of the per-head noise of the identity start.
        blur_kernel: size of the Gaussian blur of each query row over the cell grid (0: none; odd).
        blur_sigma: standard deviation of that blur, in cells.
        selector_scale: s_s, the fixed scale of the selector's attention scores.
        selector_input_scale: s_x, the scale of a selector term comparing each group's embedding
            with the backbone's embedding of the whole input (0: none, as the authors; beyond their
            code, see :class:`~sumofparts.model.selector.GroupSelector`). Costs one whole-input
            backbone pass per input.
        task: "classification" (logits, cross-entropy) or "regression" (one output per target, MSE).
        sequential_heads: train the heads one after another (:meth:`training_head`) as the
            authors do; all heads' candidates are used at evaluation either way.
        candidate_queries: which G of the K·N (head, query cell) candidates become the groups:
            ``"paper"`` (evenly spaced in (head, query) order, the authors' rule) or ``"spread"``
            (G query cells spread over the input, heads in turn; beyond the paper, see
            :func:`~sumofparts.model.generator.candidate_queries`).
        base_value: b, one value per output, or ``None`` (b = 0, the paper). The prediction is
            ``b + Σ_i w_i c_i (y_i − b)``: with weights summing to 1 and c_i ≤ 1 a model without
            b shrinks every prediction towards 0; with b it shrinks towards b (for regression,
            the training targets' mean: the prior) and ``b`` is the explanation's base value.

    Values are checked against :data:`SOP_CONFIG_FIELDS` on construction: a wrong type
    (``"no"`` for a bool, ``2.5`` for an int), NaN/inf or an out-of-range value raises
    :class:`~sumofparts.errors.ConfigError` naming the field.
    """

    num_groups: int = 20
    num_heads: int = 4
    tau: float = 0.2
    generator_scale: float = 0.06
    generator_dim: int | None = None
    generator_norm: bool = True
    generator_init: Literal["identity", "random"] = "identity"
    generator_init_noise: float = 0.5
    blur_kernel: int = 0
    blur_sigma: float = 1.0
    selector_scale: float = 0.01
    selector_input_scale: float = 0.0
    task: Literal["classification", "regression"] = "classification"
    sequential_heads: bool = True
    candidate_queries: Literal["paper", "spread"] = "paper"
    base_value: list[float] | None = None
    backbone: dict[str, Any] = field(default_factory=dict)  # the adapter's spec (filled by SumOfParts)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check (and normalise, e.g. ``numpy.int64`` -> ``int``) every field against the table."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f.name, getattr(self, f.name), SOP_CONFIG_FIELDS[f.name]))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_file_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds: every field plus ``format_version``."""
        return {"format_version": FORMAT_VERSION, **self.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SOPConfig":
        """Build from a dict of fields (absent fields take their defaults; unknown keys are refused)."""
        if not isinstance(data, dict):
            raise ConfigError(f"expected a dict of SOPConfig fields, got {type(data).__name__}")
        data = dict(data)
        if "format_version" in data:
            _check_version(data.pop("format_version"), "")
        reject_unknown_keys(data, SOP_CONFIG_FIELDS, "SOPConfig")
        return cls(**data)

    @classmethod
    def from_file_dict(cls, data: Any, source: str = "config.json") -> "SOPConfig":
        """Build from the contents of a checkpoint's ``config.json``, strictly.

        Every field of :data:`SOP_CONFIG_FIELDS` marked ``required`` must be present with
        its declared type (a missing ``tau`` is an error, not the default 0.2: the file
        might have been written with another value); ``format_version`` must be one this
        version reads. ``source`` names the file in the messages.
        """
        where = f"{source}: "
        if not isinstance(data, dict):
            raise ConfigError(f"{where}expected a JSON object of SOPConfig fields, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", 0)
        _check_version(version, where)
        if version == 0:
            # files written before format versions predate the base value and the candidate
            # schemes: they computed with b = 0 and the paper's candidates
            data.setdefault("base_value", None)
            data.setdefault("candidate_queries", "paper")
        if version <= 1:
            # versions 0 and 1 predate the selector's whole-input term: they computed without it
            data.setdefault("selector_input_scale", 0.0)
        unknown = sorted(str(k) for k in data if k not in SOP_CONFIG_FIELDS)
        if unknown:
            raise ConfigError(f"{where}unknown SOPConfig keys {unknown}; expected some of {sorted(SOP_CONFIG_FIELDS)}")
        values = check_fields(data, SOP_CONFIG_FIELDS, where=where, require=True)
        return cls(**values)

    def training_head(self, step: int, steps: int) -> int | None:
        """The generator head trained at ``step`` of ``steps``: ``min(K − 1, ⌊step·K / steps⌋)``
        with sequential heads (head k for the k-th of K equal spans of the steps), else ``None``
        (every head's candidates, as at evaluation)."""
        if not self.sequential_heads:
            return None
        return min(self.num_heads - 1, step * self.num_heads // steps)

    def replace(self, **changes: Any) -> "SOPConfig":
        return self.from_dict({**self.to_dict(), **changes})


def _check_version(version: Any, where: str) -> None:
    check_value("format_version", version, Field(int, min=0), where=where)
    if version not in _READABLE_VERSIONS:
        raise ConfigError(f"{where}format_version {version} is not one this version of sumofparts reads "
                          f"({', '.join(map(str, _READABLE_VERSIONS))}); upgrade sumofparts to load it")
