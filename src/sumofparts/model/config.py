"""The SOP model's configuration, saved as ``config.json`` beside the weights."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SOPConfig"]


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
        task: "classification" (logits, cross-entropy) or "regression" (one output per target, MSE).
        sequential_heads: train the heads one after another (head = step // (steps / K)) as the
            authors do; all heads' candidates are used at evaluation either way.
        base_value: b, one value per output, or ``None`` (b = 0, the paper). The prediction is
            ``b + Σ_i w_i c_i (y_i − b)``: with weights summing to 1 and c_i ≤ 1 a model without
            b shrinks every prediction towards 0; with b it shrinks towards b (for regression,
            the training targets' mean: the prior) and ``b`` is the explanation's base value.
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
    task: Literal["classification", "regression"] = "classification"
    sequential_heads: bool = True
    base_value: list[float] | None = None
    backbone: dict[str, Any] = field(default_factory=dict)  # the adapter's spec (filled by SumOfParts)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.tau, (int, float)) or not (0.0 < float(self.tau) <= 1.0):
            raise ValueError(f"tau must be in (0, 1], got {self.tau!r}")
        if int(self.num_groups) < 1:
            raise ValueError(f"num_groups must be >= 1, got {self.num_groups!r}")
        if int(self.num_heads) < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads!r}")
        if self.blur_kernel and (int(self.blur_kernel) < 0 or int(self.blur_kernel) % 2 == 0):
            raise ValueError(f"blur_kernel must be 0 (no blur) or a positive odd size, got {self.blur_kernel!r}")
        if self.blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be > 0, got {self.blur_sigma!r}")
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.generator_init not in ("identity", "random"):
            raise ValueError(f"generator_init must be 'identity' or 'random', got {self.generator_init!r}")
        if self.base_value is not None:
            if not isinstance(self.base_value, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in self.base_value):
                raise ValueError(f"base_value must be None or a list of finite numbers (one per output), "
                                 f"got {self.base_value!r}")
            self.base_value = [float(v) for v in self.base_value]
        if self.generator_dim is not None and int(self.generator_dim) < 1:
            raise ValueError(f"generator_dim must be >= 1 or None, got {self.generator_dim!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SOPConfig":
        if not isinstance(data, dict):
            raise TypeError(f"expected a dict of SOPConfig fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SOPConfig keys {unknown}; expected some of {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "SOPConfig":
        return self.from_dict({**self.to_dict(), **changes})
