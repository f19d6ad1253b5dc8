"""The Sum-of-Parts model: f(x) = Σ_i w_i(x) · c_i(x) · h(g_i(x) ⊙ x)."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..adapters import ADAPTERS, BackboneAdapter, adapter_from_spec
from ..errors import CheckpointError, ConfigError, InputError, InputTypeError, MissingFileError
from ..io import atomic_directory, atomic_write_json, load_tensors, read_json, recover_directory, save_tensors
from .config import SOPConfig
from .generator import GroupGenerator, binarise_top_tau, sample_candidates
from .output import GroupedExplanation, SOPOutput
from .selector import GroupSelector

__all__ = ["SumOfParts", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class SumOfParts(nn.Module):
    """A self-attributing model built around a frozen backbone.

    ``f(x) = Σ_i w_i(x) · c_i(x) · h(g_i(x) ⊙ x)``: the group generator proposes G binary
    groups of cells g_i with scales c_i, the frozen backbone h predicts from each group
    alone, and the group selector weighs those predictions with sparse weights w_i. The
    prediction *is* the weighted sum of the group predictions, so the groups and
    weights are an exact explanation.

    Build one with :meth:`from_backbone`; load a trained one with :meth:`from_pretrained`.

    >>> sop = SumOfParts.from_backbone(vit, adapter=ViTAdapter(vit), num_groups=20, tau=0.2)
    >>> out = sop(images)                      # SOPOutput: logits, group_logits, group_weights, masks, ...
    >>> expl = sop.explain(images, target=3)   # + per-pixel attributions for class 3
    """

    def __init__(self, adapter: BackboneAdapter, config: SOPConfig | None = None):
        super().__init__()
        if not isinstance(adapter, BackboneAdapter):
            raise InputTypeError(f"expected a BackboneAdapter, got {type(adapter).__name__}")
        config = config or SOPConfig()
        config = config.replace(backbone=adapter.spec())
        self.config = config
        self.backbone = adapter
        _check_config_fits_adapter(config, adapter)
        self.generator = GroupGenerator(
            adapter.make_encoder(), dim=adapter.encoder_dim, num_heads=config.num_heads,
            attn_dim=config.generator_dim or adapter.encoder_dim, scale=config.generator_scale,
            grid=adapter.cell_grid, blur_kernel=config.blur_kernel, blur_sigma=config.blur_sigma,
            norm=config.generator_norm, init=config.generator_init, init_noise=config.generator_init_noise)
        self.selector = GroupSelector(adapter.classifier_weight, config.selector_scale,
                                      input_scale=config.selector_input_scale)
        C = adapter.num_outputs
        if config.base_value is not None and len(config.base_value) != C:
            raise ConfigError(f"base_value has {len(config.base_value)} entries; expected one per output ({C})")
        base = torch.zeros(C) if config.base_value is None else torch.tensor(config.base_value, dtype=torch.float32)
        # a buffer that is not saved: the config is where the base value lives
        self._base_value: torch.Tensor
        self.register_buffer("_base_value", base, persistent=False)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, model: nn.Module, adapter: str | BackboneAdapter, **kwargs: Any) -> "SumOfParts":
        """Wrap ``model``. ``adapter``: a family name registered in :data:`sumofparts.adapters.ADAPTERS`
        (the adapter class is built around ``model``) or an adapter instance.

        Keyword arguments that are :class:`SOPConfig` fields configure the model; the
        rest go to the adapter (e.g. ``feature_layer=``, ``grid=`` for a CNN).
        """
        fields = {f.name for f in dataclasses.fields(SOPConfig)}
        config = SOPConfig(**{k: v for k, v in kwargs.items() if k in fields})
        adapter_kwargs = {k: v for k, v in kwargs.items() if k not in fields}
        if isinstance(adapter, str):
            if adapter not in ADAPTERS:
                raise ConfigError(f"unknown adapter {adapter!r}; expected one of {', '.join(ADAPTERS)} "
                                  "or a BackboneAdapter instance")
            adapter_cls = ADAPTERS[adapter]
            accepted = [n for n, p in inspect.signature(adapter_cls.__init__).parameters.items()
                        if p.kind == p.KEYWORD_ONLY]
            unknown = sorted(k for k in adapter_kwargs if k not in accepted)
            if unknown:
                raise ConfigError(f"unknown arguments {unknown}: neither SOPConfig fields ({', '.join(sorted(fields))}) "
                                  f"nor arguments of {adapter_cls.__name__} ({', '.join(accepted)})")
            adapter = adapter_cls(model, **adapter_kwargs)
        elif adapter_kwargs:
            raise ConfigError(f"unknown arguments {sorted(adapter_kwargs)}: with an adapter instance, only SOPConfig "
                              f"fields may be passed ({', '.join(sorted(fields))})")
        return cls(adapter, config)

    # -- the model ----------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return self.backbone.num_outputs

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The generator's encoder copy and projections, the selector's projections and queries."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]

    def forward(self, inputs: Any, *, head: int | None = None, validate: bool = True,
                input_embedding: torch.Tensor | None = None) -> SOPOutput:
        """Groups, group predictions, weights and the final prediction for a batch.

        ``head``: use only this generator head's candidates (sequential head training);
        ``None`` (evaluation): all heads. ``input_embedding``: see :meth:`forward_masks`.
        The whole computation, top to bottom:

        1. ``probs = self.candidates(inputs, head=head)``: ``(B, G, N)``, the G kept candidate
           distributions over the cells (generator attention, evenly spaced candidates);
        2. ``masks, c = binarise_top_tau(probs, valid, tau)``: each group is the top ⌊τ·n_valid⌋
           cells of its distribution, ``c = 2·Σ_top a − 1``;
        3. :meth:`forward_masks`: the frozen backbone on each group, the selector's weights,
           and ``logits = b + Σ_i w_i · c_i · (y_i − b)``.
        """
        if validate:
            self.backbone.validate(inputs)
        probs, valid = self.candidates(inputs, head=head)
        masks, scale = binarise_top_tau(probs, valid, self.config.tau)
        return self.forward_masks(inputs, masks, scale, input_embedding=input_embedding)

    def candidates(self, inputs: Any, *, head: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The G candidate groups as distributions over cells ``(B, G, N)``, and the valid cells ``(B, N)``.

        The generator's K' attention maps give K'·n_valid candidates per input (one per head
        and valid query cell); ``sample_candidates`` keeps G of them (``config.candidate_queries``:
        the paper's evenly spaced (head, query) pairs, or queries spread over the input).
        """
        cfg = self.config
        if head is not None and (isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < cfg.num_heads):
            raise ConfigError(f"head must be in [0, {cfg.num_heads}) (an integer) or None, got {head!r}")
        valid = self.backbone.valid_cells(inputs)  # (B, N)
        attn = self.generator(inputs, valid, None if head is None else [head])  # (B, K', N, N)
        candidates = attn.shape[1] * attn.shape[2]  # K' heads x N cells
        if cfg.num_groups > candidates:
            raise ConfigError(f"num_groups={cfg.num_groups} is more than the {candidates} candidate groups")
        return sample_candidates(attn, valid, cfg.num_groups, scheme=cfg.candidate_queries,
                                 grid=self.backbone.cell_grid), valid

    def forward_masks(self, inputs: Any, masks: torch.Tensor, scale: torch.Tensor, *,
                      input_embedding: torch.Tensor | None = None) -> SOPOutput:
        """SOP's prediction from given groups: ``masks (B, G, N)`` bool and scales ``c (B, G)``.

        ``y_i, z_i = h(g_i ⊙ x)`` (the frozen backbone on each group alone, no graph kept),
        ``w = selector(z)`` (sparsemax over the G groups for each output; with
        ``selector_input_scale`` > 0 also given the backbone's embedding of the whole input) and
        ``logits = b + Σ_i w_i · c_i · (y_i − b)`` with ``b`` the base value (0 unless the
        config sets one). :meth:`forward` calls it with the generator's groups; the
        insertion/deletion curves call it with groups re-made at each fraction.
        ``input_embedding``: the backbone's embedding of the whole inputs ``(B, D)`` when the
        caller has it (used only with ``selector_input_scale`` > 0; computed here otherwise).
        """
        if masks.ndim != 3 or masks.dtype != torch.bool:
            raise InputError(f"expected masks as a bool tensor (B, G, N), got {tuple(masks.shape)} {masks.dtype}")
        if tuple(scale.shape) != tuple(masks.shape[:2]):
            raise InputError(f"expected scale of shape {tuple(masks.shape[:2])} (B, G), got {tuple(scale.shape)}")
        # the masks carry no gradient and the backbone is frozen: no graph through it
        with torch.no_grad():
            group_logits, z = self.backbone.forward_groups(inputs, masks)
            z_input = None
            if self.selector.uses_input:
                z_input = (self.backbone.forward_with_embedding(inputs)[1] if input_embedding is None
                           else input_embedding)
        weights = self.selector(z, z_input)  # (B, G, C)
        base = self.base_value.to(group_logits.dtype)  # (C,)
        logits = base + (weights * scale.unsqueeze(-1) * (group_logits - base)).sum(1)
        return SOPOutput(logits=logits, group_logits=group_logits, group_weights=weights, masks=masks,
                         input_masks=self.backbone.masks_to_input(masks, inputs), scale=scale,
                         base_value=base, task=self.config.task)

    @property
    def base_value(self) -> torch.Tensor:
        """``(C,)``: b, the value the prediction starts from (``config.base_value``; zeros if unset)."""
        return self._base_value

    @torch.no_grad()
    def explain(self, inputs: Any, target: int | Sequence[int] | torch.Tensor | None = None) -> GroupedExplanation:
        """Explain a batch: the SOP output plus the attribution map for ``target``.

        ``target``: the class (or regression output) to explain, one for all inputs or
        one per input; ``None``: the predicted class (classification only).
        """
        was_training = self.training
        self.eval()
        try:
            out = self(inputs)
        finally:
            self.train(was_training)
        t = out._targets(target)
        return GroupedExplanation(**{f.name: getattr(out, f.name) for f in dataclasses.fields(SOPOutput)},
                                  target=t, attributions=out.attribution_map(t))

    @torch.no_grad()
    def backbone_predict(self, inputs: Any) -> torch.Tensor:
        """The frozen backbone's own output on the whole input ``(B, C)``."""
        self.backbone.validate(inputs)
        logits: torch.Tensor = self.backbone(inputs)
        return logits

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (with its format version) and ``model.safetensors`` into ``directory`` atomically."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            atomic_write_json(tmp / CONFIG_NAME, self.config.to_file_dict())
            save_tensors(tmp / WEIGHTS_NAME, self.state_dict(), metadata={"format": "sumofparts"})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, backbone: nn.Module | None = None,
                        device: str | torch.device = "cpu") -> "SumOfParts":
        """Load a model written by :meth:`save_pretrained`.

        ``backbone``: the backbone module to fill with the saved weights. ``None`` rebuilds
        it from the saved spec, but only a registered backbone class or an allow-listed
        Hugging Face class with checked, bounded arguments; nothing named by the file is
        imported (docs/security.md). Anything else raises
        :class:`~sumofparts.errors.UnsafeCheckpointError`: build the model yourself and pass
        it, ``SumOfParts.from_pretrained(directory, backbone=model)``.

        The config is read strictly: every field that changes the computation must be
        present with its type; the weights must match the model's names, shapes and dtypes.
        """
        directory = Path(directory)
        recover_directory(directory)
        if not directory.is_dir():
            raise MissingFileError(f"expected a checkpoint directory at {directory}, found nothing there")
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
        if missing:
            raise MissingFileError(f"checkpoint directory {directory} is missing {', '.join(missing)} "
                                   f"(expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        config_file = directory / CONFIG_NAME
        config = SOPConfig.from_file_dict(read_json(config_file), source=str(config_file))
        if not config.backbone:
            raise CheckpointError(f"{config_file} has an empty 'backbone' spec; cannot rebuild the adapter")
        adapter = adapter_from_spec(config.backbone, model=backbone, where=f"{config_file}: ")
        model = cls(adapter, config)
        model.load_weights(directory / WEIGHTS_NAME)
        return model.to(device)

    def load_weights(self, path: str | Path) -> None:
        """Load a ``model.safetensors`` into this model, checking names, shapes and dtypes first.

        Raises :class:`~sumofparts.errors.CheckpointError` naming the file and the tensors
        that do not fit (missing, unexpected, another shape or another dtype), and
        :class:`~sumofparts.errors.CorruptFileError` for a truncated or corrupt file.
        """
        tensors = load_tensors(path)
        problems = _weight_problems(tensors, self.state_dict())
        if problems:
            raise CheckpointError(f"{path} does not fit this model: " + "; ".join(problems))
        self.load_state_dict(tensors, strict=True)


def _weight_problems(tensors: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``tensors`` from loading into a model whose state dict is ``own``."""
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    common = [k for k in own if k in tensors]
    mismatched = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in common if tuple(tensors[k].shape) != tuple(own[k].shape)]
    dtypes = [f"{k}: checkpoint {tensors[k].dtype} vs model {own[k].dtype}"
              for k in common if tensors[k].dtype != own[k].dtype]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
    if dtypes:
        problems.append(f"{len(dtypes)} dtype mismatches (e.g. {'; '.join(dtypes[:3])})")
    return problems


def _check_config_fits_adapter(config: SOPConfig, adapter: BackboneAdapter) -> None:
    """Refuse a config the adapter's cells cannot serve: too small a tau, too many groups, blur without a grid.

    With ``N = adapter.max_cells`` (the grid's size, or the position table's length for
    sequences): a group of an image holds ``floor(tau * N) >= 1`` cells, and there are at
    most ``K' * N`` candidate groups (``K' = 1`` with sequential heads, else ``K``).
    """
    n = adapter.max_cells
    if n is not None:
        if adapter.cell_grid is not None and int(config.tau * n + 1e-9) < 1:
            raise ConfigError(f"tau={config.tau} keeps floor(tau*N) = 0 of the N={n} cells; "
                              f"expected tau >= {1 / n:.4g}")
        per_head = n if config.sequential_heads else config.num_heads * n
        if config.num_groups > per_head:
            heads = "one head" if config.sequential_heads else f"{config.num_heads} heads"
            raise ConfigError(f"num_groups={config.num_groups} is more than the {per_head} candidate groups "
                              f"({heads} x {n} cells)")
    if config.blur_kernel and adapter.cell_grid is None:
        raise ConfigError(f"blur_kernel={config.blur_kernel} needs a cell grid: blur is for image backbones only "
                          "(set blur_kernel=0)")
