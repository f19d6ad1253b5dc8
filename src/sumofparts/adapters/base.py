"""The backbone adapter protocol: the one place that knows a model family.

An adapter wraps a frozen backbone ``h`` and answers four questions for
:class:`~sumofparts.SumOfParts`:

1. **What are the cells?** ``num_cells(inputs)`` (N), ``cell_grid`` (the (h, w)
   layout of image cells, ``None`` for sequences) and ``valid_cells(inputs)``
   ``(B, N)`` bool (cells that may be grouped: never padding or special tokens).
2. **How are cell embeddings made for the generator?** ``make_encoder()`` returns a
   *trainable copy* of the backbone's encoder: ``encoder(inputs) -> (B, N, D_enc)``.
3. **How is the backbone run on groups?** ``forward_groups(inputs, masks)`` with
   ``masks: (B, G, N)`` bool returns group logits ``(B, G, C)`` and group
   embeddings ``(B, G, D)`` (the input of the classifier layer), all B·G masked
   inputs going through the backbone in batches of at most ``group_batch_size``.
4. **Where is the classifier?** ``classifier_weight``: ``(C, D)``.

For layer and neuron attribution it also names the backbone's layers:
``named_layers()`` (name -> module, in forward order), ``layer(name)`` (an unknown name
raises :class:`UnknownLayerError` listing the valid ones), ``default_layer()``, and
``layer_view(name)``, a context in which one module's output is ``(B, K, *positions)``:
the layer's K units first, then its positions laid out like the cells (an image grid
``(h, w)``, a token sequence ``(L,)``, or nothing for a layer without positions).

**Capabilities.** What else an adapter can do is listed in :attr:`BackboneAdapter.capabilities`
(:data:`CAPABILITIES` says what each name promises); attribution methods and the evaluation ask
for capabilities, never for a family name.

Adding a model family means writing one subclass of :class:`BackboneAdapter` that sets
``family`` (it registers itself in :data:`ADAPTERS` under that name) and implements the
abstract methods; nothing else in the library changes (docs/development.md).
The backbone's parameters are frozen (``requires_grad=False``) and it stays in
eval mode whatever mode the surrounding module is put in.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, NamedTuple, Protocol

import torch
from torch import nn

from ..errors import ConfigError, InputError, InputTypeError
from ..ops import describe

__all__ = ["BackboneAdapter", "Inputs", "LayerView", "UnknownLayerError", "describe", "check_image_batch",
           "ADAPTERS", "CAPABILITIES", "GroupPasses", "EmbeddedInputs",
           "adapter_from_spec", "canonical_spec"]

#: an image tensor (B, C, H, W), a feature batch (B, d), or a dict of text tensors
#: {"input_ids": (B, L), "attention_mask": (B, L)}: whatever the adapter's family takes
Inputs = Any

#: what each capability name in :attr:`BackboneAdapter.capabilities` promises
CAPABILITIES: dict[str, str] = {
    "cell_grid": "the cells lie on a 2-D grid (cell_grid = (h, w)) and masks_to_input upsamples a cell mask to "
                 "the input's pixels",
    "image_input": "an input is one tensor of shape (B, *input_shape) = (B, C, H, W)",
    "token_input": "inputs are token ids; input_embeddings(inputs) gives their word embeddings, the mask baseline "
                   "and the extra arguments of embedding_forward(), the backbone as a function of the embeddings",
    "cls_attention": "cls_attention(inputs) gives the last layer's attention from the CLS token to each cell (B, N)",
    "layer_map": "default_layer() names a layer whose units lie on the cells (layer_positions > 0), so a layer "
                 "map (Grad-CAM, layer attribution) can be drawn",
    "module_forward": "the backbone module itself maps the input tensor to the logits tensor (LRP walks it)",
}

#: adapter classes by family name: every subclass of BackboneAdapter that sets ``family`` is added here
ADAPTERS: dict[str, type["BackboneAdapter"]] = {}


class GroupPasses(Protocol):
    """What :meth:`BackboneAdapter.sharing_passes` routes group passes through (e.g. the evaluation's
    ``PassCache``): the same contract as :meth:`BackboneAdapter.forward_groups`."""

    def forward_groups(self, inputs: Any, masks: torch.Tensor, *,
                       mode: str | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


class EmbeddedInputs(NamedTuple):
    """Token inputs seen by their word embeddings (:meth:`BackboneAdapter.input_embeddings`)."""

    embeddings: torch.Tensor  #: ``(B, L, D)`` the tokens' word embeddings
    baseline: torch.Tensor  #: ``(B, L, D)`` what a masked token is replaced by (special tokens keep their own)
    extra: tuple[Any, ...]  #: the further arguments of :meth:`BackboneAdapter.embedding_forward` (masks, types)


class UnknownLayerError(ConfigError):
    """A layer name the adapter does not know; the message lists the names it does."""


class LayerView(nn.Module):
    """Identity module: the place where a layer's output is seen as ``(B, K, *positions)``.

    :meth:`BackboneAdapter.layer_view` routes a layer's output through it (reshaped into
    that layout and back), so that Captum's layer and neuron methods, given this module,
    attribute to the layer's units at each position.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class BackboneAdapter(nn.Module):
    """Base class of the adapters. Subclasses implement the abstract methods.

    Args:
        model: the backbone, put in eval mode and frozen here.
        classifier: the final linear layer of ``model`` (its input is the group embedding).
        group_batch_size: largest number of masked inputs sent through the backbone at once
            (the memory budget); the B·G masked inputs are chunked by it.
    """

    #: the family's registered name (a subclass that sets it is added to :data:`ADAPTERS`)
    family: ClassVar[str] = "base"
    #: what the adapter can do beyond the protocol (names in :data:`CAPABILITIES`)
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        family = cls.__dict__.get("family")
        if family is None:
            return
        unknown = sorted(set(cls.capabilities) - set(CAPABILITIES))
        if unknown:
            raise ConfigError(f"{cls.__name__} declares unknown capabilities {unknown}; expected names among "
                              f"{', '.join(CAPABILITIES)}")
        known = ADAPTERS.get(family)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ConfigError(f"adapter family {family!r} is already registered by {known.__module__}."
                              f"{known.__qualname__}; give {cls.__name__} another family name")
        ADAPTERS[family] = cls

    def __init__(self, model: nn.Module, classifier: nn.Linear, group_batch_size: int = 256):
        super().__init__()
        if not isinstance(classifier, nn.Linear):
            raise InputTypeError(f"the classifier must be an nn.Linear, got {type(classifier).__name__}")
        if isinstance(group_batch_size, bool) or not isinstance(group_batch_size, int) or group_batch_size < 1:
            raise ConfigError(f"group_batch_size must be an integer >= 1, got {group_batch_size!r}")
        self.model = model
        self.classifier = classifier
        self.group_batch_size = int(group_batch_size)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self._passes: GroupPasses | None = None  # see sharing_passes

    # -- nn.Module ---------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "BackboneAdapter":
        super().train(mode)
        self.model.eval()  # the backbone is frozen: dropout and batch-norm statistics stay fixed
        return self

    # -- what the cells are ------------------------------------------------------------------
    cell_grid: tuple[int, int] | None = None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The shape of one input's tensor, ``(C, H, W)`` for images or ``(d,)`` for features; ``None``
        when inputs are not one tensor of a fixed shape (token sequences)."""
        return None

    def num_cells(self, inputs: Inputs) -> int:
        raise NotImplementedError

    @property
    def max_cells(self) -> int | None:
        """The largest number of cells an input can have (``None``: no bound known).

        Images: the cell grid's size; sequences: the position table's length. SumOfParts
        checks ``num_groups`` against it when it is built.
        """
        if self.cell_grid is not None:
            return int(self.cell_grid[0] * self.cell_grid[1])
        return None

    def valid_cells(self, inputs: Inputs) -> torch.Tensor:
        """``(B, N)`` bool: cells that may be part of a group. All of them by default."""
        return torch.ones(self.batch_size(inputs), self.num_cells(inputs), dtype=torch.bool,
                          device=self.device)

    def batch_size(self, inputs: Inputs) -> int:
        raise NotImplementedError

    def validate(self, inputs: Inputs) -> None:
        """Raise :class:`~sumofparts.errors.InputError` naming what was expected and what came."""
        raise NotImplementedError

    def to_device(self, inputs: Inputs, device: torch.device | str) -> Inputs:
        if isinstance(inputs, dict):
            return {k: v.to(device) for k, v in inputs.items()}
        return inputs.to(device)

    def select(self, inputs: Inputs, index: torch.Tensor | slice) -> Inputs:
        """The sub-batch ``inputs[index]``."""
        if isinstance(inputs, dict):
            return {k: v[index] for k, v in inputs.items()}
        return inputs[index]

    # -- the generator's encoder ---------------------------------------------------------------
    encoder_dim: int = 0

    def make_encoder(self) -> nn.Module:
        raise NotImplementedError

    # -- the backbone ------------------------------------------------------------------------
    @property
    def classifier_weight(self) -> torch.Tensor:
        return self.classifier.weight

    @property
    def num_outputs(self) -> int:
        return self.classifier.out_features

    @property
    def embed_dim(self) -> int:
        return self.classifier.in_features

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's floating-point dtype (its classifier's): inputs must come in it."""
        return self.classifier.weight.dtype

    def forward(self, inputs: Inputs) -> torch.Tensor:
        """The plain backbone: logits ``(B, C)``."""
        return self._logits(self._call_model(inputs))

    def forward_with_embedding(self, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, C)`` and the classifier's input ``(B, D)`` (the group embedding z).

        The classifier's input is read by a forward pre-hook that exists only during this call.
        """
        seen: list[torch.Tensor] = []
        handle = self.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            logits = self._logits(self._call_model(inputs))
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError("the classifier layer was not called during the backbone's forward")
        return logits, seen[-1]

    def _call_model(self, inputs: Inputs) -> Any:
        if isinstance(inputs, dict):
            return self.model(**inputs)
        return self.model(inputs)

    @staticmethod
    def _logits(output: Any) -> torch.Tensor:
        logits: torch.Tensor = output.logits if hasattr(output, "logits") else output
        return logits

    def mask_inputs(self, inputs: Inputs, masks: torch.Tensor) -> Inputs:
        """Inputs restricted to groups: ``masks (B, G, N)`` -> a batch of B·G masked inputs."""
        raise NotImplementedError

    def restrict_inputs(self, inputs: Inputs, masks: torch.Tensor) -> Inputs:
        """The B·G inputs restricted to groups ``masks (B, G, N)``, in the inputs' own format, so that
        any model taking these inputs (SOP itself, a BagNet) can score them; the backbone gives them the
        same outputs as to :meth:`mask_inputs`'s. Default: :meth:`mask_inputs` (images, features)."""
        return self.mask_inputs(inputs, masks)

    #: the ways this family can show the backbone a group of cells: ``"zero"`` (the other cells
    #: set to the baseline: zeroed pixels, [MASK] tokens) and, where the family allows it,
    #: ``"drop"`` (the other cells removed from the input, e.g. ViT patch tokens).
    masking_modes: tuple[str, ...] = ("zero",)

    @property
    def masking_mode(self) -> str:
        """The mode :meth:`forward_groups` uses unless told otherwise."""
        return self.masking_modes[0]

    def equal_group_sizes(self, mode: str) -> bool:
        """Whether every group of one :meth:`compute_groups` call must hold the same number of cells in
        ``mode`` (e.g. a ViT dropping patches stacks groups as token sequences of one length)."""
        return False

    def check_masking_mode(self, mode: str | None) -> str:
        """``mode`` (``None``: the default) checked against :attr:`masking_modes`."""
        if mode is None:
            return self.masking_mode
        if mode not in self.masking_modes:
            raise ConfigError(f"masking mode {mode!r} is not available for this backbone; expected one of "
                             f"{', '.join(self.masking_modes)}")
        return mode

    def forward_groups(self, inputs: Inputs, masks: torch.Tensor, *,
                       mode: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the backbone on every group: ``masks (B, G, N)`` bool -> logits ``(B, G, C)``, z ``(B, G, D)``.

        The B·G masked inputs are built and evaluated in chunks of at most
        ``group_batch_size`` (never a Python loop over groups). ``mode``: one of
        :attr:`masking_modes` (``None``: :attr:`masking_mode`). Inside :meth:`sharing_passes`
        the passes are asked of the given object instead (which calls :meth:`compute_groups`
        for what it has not seen).
        """
        if self._passes is not None:
            return self._passes.forward_groups(inputs, masks, mode=mode)
        return self.compute_groups(inputs, masks, mode=mode)

    @contextlib.contextmanager
    def sharing_passes(self, passes: GroupPasses | None) -> Iterator[None]:
        """Inside the block, :meth:`forward_groups` is answered by ``passes`` (``None``: computed here).

        Everything that runs groups through this backbone (SOP's ``forward_masks``, the curves,
        the "-F" conversions, FRESH) then shares the passes without knowing about it; the
        evaluation's pass cache uses it. The previous setting is restored on exit.
        """
        previous, self._passes = self._passes, passes
        try:
            yield
        finally:
            self._passes = previous

    def compute_groups(self, inputs: Inputs, masks: torch.Tensor, *,
                       mode: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_groups` computed by this backbone, whatever :meth:`sharing_passes` says."""
        mode = self.check_masking_mode(mode)
        B, G, _ = masks.shape
        per_chunk = max(1, self.group_batch_size // G)  # whole examples per chunk
        logits, embeds = [], []
        for start in range(0, B, per_chunk):
            idx = slice(start, min(B, start + per_chunk))
            sub = self.select(inputs, idx)
            y, z = self._forward_masked(sub, masks[idx], mode)
            logits.append(y)
            embeds.append(z)
        y = torch.cat(logits).reshape(B, G, -1)
        z = torch.cat(embeds).reshape(B, G, -1)
        return y, z

    def _forward_masked(self, inputs: Inputs, masks: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk of :meth:`forward_groups` in a mode of :attr:`masking_modes` (the base class: ``"zero"``)."""
        return self.forward_with_embedding(self.mask_inputs(inputs, masks))

    # -- layers of the generator's copy (concepts, model comparison) -------------------------
    def encoder_layers(self, encoder: nn.Module) -> dict[str, nn.Module]:
        """The layers of the generator's trainable encoder copy (from :meth:`make_encoder`) that
        correspond to :meth:`named_layers`, under the same names: the layers the copy holds and
        runs. Empty when the encoder is not a copy of the backbone (tabular)."""
        return {}

    # -- resolution ----------------------------------------------------------------------------
    def masks_to_input(self, masks: torch.Tensor, inputs: Inputs | None = None) -> torch.Tensor:
        """Cell masks ``(B, G, N)`` at input resolution: ``(B, G, H, W)`` for images, unchanged for tokens."""
        return masks

    def cell_index_map(self, inputs: Inputs) -> torch.Tensor:
        """Which cell each input feature belongs to, shaped like one input's features.

        Images: ``(C, H, W)`` long (the same cell id for every channel of a pixel);
        tokens: ``(L,)`` long (``arange(L)``). Captum's ``feature_mask`` takes it as is
        (after adding a batch dimension).
        """
        if self.cell_grid is None:
            return torch.arange(self.num_cells(inputs), device=self.device)
        N = self.cell_grid[0] * self.cell_grid[1]
        eye = torch.eye(N, dtype=torch.bool, device=self.device).unsqueeze(0)  # (1, N, N)
        up = self.masks_to_input(eye, inputs)[0]  # (N, H, W)
        ids = up.float().argmax(0)  # (H, W)
        channels = inputs.shape[1] if isinstance(inputs, torch.Tensor) else 1
        return ids.unsqueeze(0).expand(channels, *ids.shape).contiguous()

    def pool_to_cells(self, attributions: torch.Tensor, inputs: Inputs) -> torch.Tensor:
        """Sum feature attributions inside each cell: ``(B, *feature_shape)`` -> ``(B, N)``."""
        ids = self.cell_index_map(inputs)
        B = attributions.shape[0]
        if tuple(attributions.shape[1:]) != tuple(ids.shape):
            raise InputError(f"expected attributions of shape (B, {', '.join(map(str, ids.shape))}), "
                             f"got {tuple(attributions.shape)}")
        N = self.num_cells(inputs)
        flat = attributions.reshape(B, -1).to(torch.float32)
        out = torch.zeros(B, N, dtype=flat.dtype, device=flat.device)
        return out.scatter_add_(1, ids.reshape(1, -1).expand(B, -1).to(flat.device), flat)

    # -- capabilities beyond the protocol (see CAPABILITIES) --------------------------------------
    @property
    def token_inputs(self) -> bool:
        """Inputs are token ids: gradient methods differentiate with respect to the word embeddings."""
        return "token_input" in self.capabilities

    def input_embeddings(self, inputs: Inputs) -> EmbeddedInputs:
        """``token_input``: the inputs' word embeddings, the masking baseline and the embedding forward's extras."""
        raise NotImplementedError(f"{type(self).__name__} has no token inputs (capability 'token_input')")

    def embedding_forward(self) -> nn.Module:
        """``token_input``: the backbone as a function of the word embeddings,
        ``module(embeddings, *extra) -> logits (B, C)``."""
        raise NotImplementedError(f"{type(self).__name__} has no token inputs (capability 'token_input')")

    def token_ids(self, inputs: Inputs) -> torch.Tensor:
        """``token_input``: ``(B, L)`` the inputs' token ids (for showing the tokens)."""
        raise NotImplementedError(f"{type(self).__name__} has no token inputs (capability 'token_input')")

    def shown_cells(self, inputs: Inputs) -> torch.Tensor:
        """``(B, N)`` bool: the cells a figure shows (all of them; token inputs: not the padding)."""
        return torch.ones(self.batch_size(inputs), self.num_cells(inputs), dtype=torch.bool, device=self.device)

    def cls_attention(self, inputs: Inputs) -> torch.Tensor:
        """``cls_attention``: ``(B, N)``, the last layer's attention from the CLS token to each cell,
        averaged over heads."""
        raise NotImplementedError(f"{type(self).__name__} has no CLS attention (capability 'cls_attention')")

    # -- layers: layer and neuron attribution ---------------------------------------------------

    def named_layers(self) -> dict[str, nn.Module]:
        """The backbone's layers a user may name, input side first: ``{dotted name: module}``.

        Names are those of ``self.model.named_modules()``. Default (CNN, tabular): every leaf
        module but the classifier (its output is the logits) and dropout, in registration order;
        the transformer adapters list their embeddings and blocks instead.
        """
        out: dict[str, nn.Module] = {}
        for name, module in self.model.named_modules():
            if (name and next(module.children(), None) is None and module is not self.classifier
                    and not isinstance(module, nn.Dropout)):
                out[name] = module
        return out

    def _names_of(self, modules: list[nn.Module | None]) -> dict[str, nn.Module]:
        """``{dotted name in self.model: module}`` for modules of the backbone (by identity)."""
        names = {id(m): n for n, m in self.model.named_modules()}
        return {names[id(m)]: m for m in modules if m is not None}

    def layer(self, name: str) -> nn.Module:
        """The module called ``name``; an unknown name raises :class:`UnknownLayerError` listing the valid ones."""
        layers = self.named_layers()
        if not isinstance(name, str) or name not in layers:
            raise UnknownLayerError(f"unknown layer {name!r} for this {self.family} backbone; expected one of: "
                                    f"{', '.join(layers)}")
        return layers[name]

    def default_layer(self) -> str:
        """The layer that layer methods and Grad-CAM use when none is named."""
        raise UnknownLayerError(f"the {self.family} adapter has no default layer: name one of "
                                f"{', '.join(self.named_layers())}")

    def layer_entering(self, index: int) -> str:
        """The layer whose output enters encoder block ``index`` (transformer backbones)."""
        raise NotImplementedError(f"the {self.family} backbone has no encoder blocks to index; name a layer "
                                  f"instead (one of {', '.join(self.named_layers())})")

    def layer_positions(self, name: str) -> int:
        """How many position axes the layer's view has that lie on the input's cell layout:
        2 (an image grid), 1 (a token sequence) or 0 (none: e.g. a fully connected layer)."""
        raise NotImplementedError(f"the {self.family} adapter does not say where its layers' units lie "
                                  "(implement layer_positions)")

    def layer_grid(self, output: torch.Tensor) -> torch.Tensor:
        """A layer's output -> ``(B, K, *positions)`` (see :meth:`layer_view`). Default: unchanged."""
        return output

    def layer_from_grid(self, grid: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`layer_grid`: the layer's output rebuilt from ``grid``."""
        return grid

    @contextlib.contextmanager
    def layer_view(self, name: str) -> Iterator[nn.Module]:
        """A module whose output is layer ``name``'s output as ``(B, K, *positions)``.

        Default: the layer module itself (its output already has that layout). Adapters
        whose layers output something else (tokens ``(B, T, D)``) yield a :class:`LayerView`
        through which a forward hook on the layer routes ``layer_grid(output)``, putting
        ``layer_from_grid`` of the view's (possibly replaced) output back in its place; the
        hook is removed on exit.
        """
        yield self.layer(name)

    @contextlib.contextmanager
    def _hooked_view(self, name: str) -> Iterator[nn.Module]:
        module = self.layer(name)
        view = LayerView()

        def hook(mod: nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (self.layer_from_grid(view(self.layer_grid(output[0])), output[0]), *output[1:])
            return self.layer_from_grid(view(self.layer_grid(output)), output)

        handle = module.register_forward_hook(hook)
        try:
            yield view
        finally:
            handle.remove()

    # -- (de)serialisation -----------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """A JSON description from which :meth:`from_spec` rebuilds it."""
        raise NotImplementedError

    @classmethod
    def canonical_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """``spec`` without what changes no computation (version metadata), in the current layout:
        two specs that build the same backbone compare equal (used to compare a resumed run's)."""
        return dict(spec)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], model: nn.Module | None = None, *,
                  where: str = "") -> "BackboneAdapter":
        """Rebuild the adapter from :meth:`spec` (weights are loaded separately).

        ``model``: the backbone to wrap; ``None`` builds an untrained one, but only what
        :mod:`sumofparts.adapters.registry` allows. Every spec entry is checked against the
        adapter's declared table first. ``where`` prefixes messages (the file).
        """
        raise NotImplementedError

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()


def adapter_from_spec(spec: Any, model: nn.Module | None = None, *, where: str = "") -> BackboneAdapter:
    """Rebuild an adapter from :meth:`BackboneAdapter.spec` (weights are loaded separately).

    ``model``: the backbone to wrap; ``None`` builds an untrained one, but only a registered
    backbone class or an allow-listed Hugging Face class, from checked arguments (anything
    else raises :class:`~sumofparts.errors.UnsafeCheckpointError`). ``where`` prefixes
    error messages (e.g. the config file's path).
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}the backbone spec must be a JSON object, got {type(spec).__name__}")
    family = spec.get("family")
    if not isinstance(family, str) or family not in ADAPTERS:
        raise ConfigError(f"{where}unknown adapter family {family!r}; expected one of {', '.join(ADAPTERS)}")
    try:
        return ADAPTERS[family].from_spec(spec, model, where=where)
    except ConfigError as exc:  # the adapter's own checks: say which file they concern
        if where and not str(exc).startswith(where):
            raise type(exc)(f"{where}backbone: {exc}") from None
        raise


def canonical_spec(spec: Any) -> Any:
    """``spec`` as its adapter class compares it (see :meth:`BackboneAdapter.canonical_spec`)."""
    if isinstance(spec, dict) and spec.get("family") in ADAPTERS:
        return ADAPTERS[spec["family"]].canonical_spec(spec)
    return spec


def upsample_nearest(masks: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``(B, G, h*w)`` bool -> ``(B, G, H, W)`` bool, nearest-neighbour."""
    B, G, N = masks.shape
    h, w = grid
    if h * w != N:
        raise InputError(f"masks have {N} cells but the grid {h}x{w} has {h * w}")
    m = masks.reshape(B * G, 1, h, w).float()
    up = nn.functional.interpolate(m, size=size, mode="nearest")
    return up.reshape(B, G, *size) > 0.5


def check_image_batch(x: Any, channels: int, size: tuple[int, int], dtype: torch.dtype | None = None) -> None:
    """Check an image batch ``(B, channels, H, W)``: type, shape, non-empty, dtype, finite values.

    ``dtype``: the backbone's floating-point dtype; another floating dtype (float16,
    bfloat16, float64 for a float32 backbone) is refused rather than cast silently, with a
    message saying how to convert it.
    """
    expected = f"(B, {channels}, {size[0]}, {size[1]})"
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"expected an image tensor of shape {expected}, got {describe(x)}")
    if x.ndim != 4 or x.shape[1] != channels or tuple(x.shape[2:]) != tuple(size):
        raise InputError(
            f"expected an image batch of shape {expected}, got {describe(x)}"
            + (" (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else "")
        )
    if x.shape[0] == 0:
        raise InputError(f"expected at least one image, got an empty batch: {describe(x)}")
    if not x.is_floating_point():
        raise InputTypeError(f"expected a floating-point image tensor, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise InputError(f"expected images of the backbone's dtype {dtype}, got dtype {x.dtype}; "
                         f"convert them first, e.g. x.to({dtype})")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise InputError(f"the input contains {bad} NaN or infinite values; expected finite numbers")



class EncoderLayers:
    """Layers of a transformer backbone (mixed into the ViT and BERT adapters).

    The embedding module and every encoder block (and :meth:`final_token_layers`, e.g. a ViT's
    final LayerNorm) output tokens ``(B, T, D)``, seen as ``(D, *positions)`` through a hook
    (:meth:`layer_grid`); :meth:`pooled_layers` (e.g. BERT's pooler, ``(B, D)``) have no
    positions. Names are the model's own dotted names. The default layer is the one whose output
    *enters* the last block: after the last block only the CLS token reaches a ViT's classifier,
    so a layer method there would give every patch 0.
    """

    #: position axes of a token layer's view: 2 (a patch grid) or 1 (a token sequence)
    token_positions: int = 1

    if TYPE_CHECKING:  # provided by BackboneAdapter, which every user of this mixin also subclasses
        model: nn.Module

        def _names_of(self, modules: list[nn.Module | None]) -> dict[str, nn.Module]: ...
        def layer(self, name: str) -> nn.Module: ...
        @contextlib.contextmanager
        def _hooked_view(self, name: str) -> Iterator[nn.Module]: ...

    @property
    def hf(self) -> Any:
        """The wrapped Hugging Face model, typed dynamically: its attributes depend on its class."""
        return self.model

    def embedding_module(self) -> nn.Module:
        raise NotImplementedError

    def encoder_blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def final_token_layers(self) -> list[nn.Module]:
        return []

    def pooled_layers(self) -> list[nn.Module | None]:
        return []

    def _token_layers(self) -> dict[str, nn.Module]:
        return self._names_of([self.embedding_module(), *self.encoder_blocks(), *self.final_token_layers()])

    def named_layers(self) -> dict[str, nn.Module]:
        return {**self._token_layers(), **self._names_of(self.pooled_layers())}

    def layer_entering(self, index: int) -> str:
        blocks = list(self.encoder_blocks())
        n = len(blocks)
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise InputError(f"encoder block index must be an int in [-{n}, {n}), got {index!r}")
        i = index % n
        module = self.embedding_module() if i == 0 else blocks[i - 1]
        name: str = next(iter(self._names_of([module])))
        return name

    def default_layer(self) -> str:
        return self.layer_entering(-1)

    def layer_positions(self, name: str) -> int:
        self.layer(name)
        return self.token_positions if name in self._token_layers() else 0

    @staticmethod
    def _last_cls_row(output: Any) -> torch.Tensor:
        """``(B, T)``: the last layer's attention from token 0 (CLS) to every token, averaged over heads."""
        attentions = getattr(output, "attentions", None)
        if not attentions or attentions[-1] is None:
            raise RuntimeError("the backbone returned no attention maps: build it with "
                               "attn_implementation='eager' (SDPA attention does not return them)")
        row: torch.Tensor = attentions[-1][:, :, 0, :].mean(1)
        return row

    @contextlib.contextmanager
    def layer_view(self, name: str) -> Iterator[nn.Module]:
        if name in self._token_layers():
            with self._hooked_view(name) as view:
                yield view
        else:
            yield self.layer(name)
