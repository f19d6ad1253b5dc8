"""Adapter for a plain PyTorch CNN: cells are the cells of a feature-map grid."""
from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError, InputError, InputTypeError, UnsafeCheckpointError
from ..validation import Field, check_fields, check_value
from .base import BackboneAdapter, check_image_batch, describe, upsample_nearest
from .registry import LEGACY_FACTORIES, build_backbone, pass_backbone_hint, registered_name

__all__ = ["CNNAdapter", "CNN_SPEC_FIELDS"]


def _input_size(shape: list[int]) -> str | None:
    c, h, w = shape
    return None if c * h * w <= 2**22 else "hold at most 2**22 values (C*H*W)"


#: the entries of a CNN adapter's spec, checked before anything is built
CNN_SPEC_FIELDS: dict[str, Field] = {
    "family": Field(str, choices=("cnn",)),
    "architecture": Field(str, optional=True, doc="registered name of the CNN class (None: not registered)"),
    "architecture_kwargs": Field(dict, doc="its constructor arguments, checked against its schema"),
    "class_name": Field(str, required=False, default=None, optional=True,
                        doc="module.Class of the model, for messages only (never imported)"),
    "feature_layer": Field(str),
    "classifier": Field(str),
    "grid": Field(list, item=int, length=2, min=1, max=4096),
    "input_shape": Field(list, item=int, length=3, min=1, max=4096, check=_input_size),
    "group_batch_size": Field(int, min=1, max=1_000_000, required=False, default=256),
}


class _StopForward(Exception):
    pass


class _CNNCellEncoder(nn.Module):
    """Trainable copy of a CNN up to ``feature_layer``: image -> ``(B, h*w, D)`` cell embeddings.

    The copy runs the network until the feature layer has produced its output and
    stops there; the feature map is average-pooled to the cell grid when its size
    differs from it.
    """

    def __init__(self, model: nn.Module, feature_layer: str, grid: tuple[int, int]):
        super().__init__()
        self.net = copy.deepcopy(model)
        for p in self.net.parameters():
            p.requires_grad_(True)
        self.feature_layer = feature_layer
        self.grid = grid
        self._out: torch.Tensor | None = None
        dict(self.net.named_modules())[feature_layer].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._out = output
        raise _StopForward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            self.net(x)
        except _StopForward:
            pass
        fmap, self._out = self._out, None
        if fmap is None or fmap.ndim != 4:
            raise RuntimeError(f"feature layer {self.feature_layer!r} must output (B, D, h, w), got "
                               f"{describe(fmap)}")
        if tuple(fmap.shape[-2:]) != tuple(self.grid):
            fmap = nn.functional.adaptive_avg_pool2d(fmap, self.grid)
        return fmap.flatten(2).transpose(1, 2)  # (B, h*w, D)


class CNNAdapter(BackboneAdapter):
    """A plain PyTorch CNN as an SOP backbone.

    Args:
        model: the CNN, ``model(x) -> (B, C)`` for ``x: (B, channels, H, W)``.
        feature_layer: dotted name (as in ``model.named_modules()``) of the layer whose
            output ``(B, D, h, w)`` gives the generator's cell embeddings.
        classifier: dotted name of the final ``nn.Linear``; its input is the group
            embedding. ``None``: the last ``nn.Linear`` of the model.
        grid: the cell grid ``(h, w)``; ``None``: the feature map's own size. Masks are
            upsampled nearest from the grid to the input.
        input_shape: ``(channels, H, W)``; ``None``: read from ``model.input_shape`` if
            the model has it, else required.
        group_batch_size: largest number of masked images per backbone call.

    Layers (layer and neuron attribution): every leaf module of the CNN but the classifier and
    dropout (and the feature layer), under its own dotted name; a layer's output ``(B, K, h, w)`` is its
    view as it is (K channels on an ``h×w`` grid), a ``(B, K)`` output has no positions. The default layer is ``feature_layer``.
    """

    family = "cnn"
    capabilities = frozenset({"cell_grid", "image_input", "layer_map", "module_forward"})
    cell_grid: tuple[int, int]

    def __init__(self, model: nn.Module, *, feature_layer: str, classifier: str | None = None,
                 grid: tuple[int, int] | None = None, input_shape: tuple[int, int, int] | None = None,
                 group_batch_size: int = 256):
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"CNNAdapter expects an nn.Module, got {type(model).__name__}")
        modules = dict(model.named_modules())
        if feature_layer not in modules:
            raise ConfigError(f"feature_layer {feature_layer!r} is not a module of the model; expected one of "
                              f"{', '.join(n for n in modules if n)}")
        if classifier is None:
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            if not linears:
                raise ConfigError("the model has no nn.Linear layer to use as the classifier")
            classifier = linears[-1]
        if classifier not in modules or not isinstance(modules[classifier], nn.Linear):
            raise ConfigError(f"classifier {classifier!r} must name an nn.Linear of the model")
        super().__init__(model, modules[classifier], group_batch_size)
        if input_shape is None:
            input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ConfigError("input_shape (channels, H, W) is required: the model has no .input_shape attribute")
        self._input_shape = tuple(check_value("input_shape", input_shape, Field(list, item=int, length=3, min=1)))
        if grid is not None:
            grid = tuple(check_value("grid", grid, Field(list, item=int, length=2, min=1)))
        self.feature_layer = feature_layer
        self.classifier_name = classifier
        # probe the feature map once to learn its size and depth
        probe = _CNNCellEncoder(model, feature_layer, (1, 1))
        with torch.no_grad():
            dummy = torch.zeros(1, *self.input_shape, device=self.device)
            probe.net.eval()
            try:
                probe.net(dummy)
            except _StopForward:
                pass
        fmap = probe._out
        del probe
        if fmap is None or fmap.ndim != 4:
            raise ConfigError(f"feature_layer {feature_layer!r} must output (B, D, h, w), got {describe(fmap)}")
        self.feature_shape = tuple(fmap.shape[1:])
        gh, gw = (int(v) for v in (grid or fmap.shape[-2:]))
        self.cell_grid = (gh, gw)
        self.encoder_dim = int(fmap.shape[1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, H, W)`` of one input image."""
        return self._input_shape

    def num_cells(self, inputs: Any) -> int:
        return self.cell_grid[0] * self.cell_grid[1]

    def batch_size(self, inputs: Any) -> int:
        return int(inputs.shape[0])

    def validate(self, inputs: Any) -> None:
        check_image_batch(inputs, self.input_shape[0], self.input_shape[1:], self.dtype)

    def make_encoder(self) -> nn.Module:
        enc = _CNNCellEncoder(self.model, self.feature_layer, self.cell_grid)
        enc.train()
        return enc

    def mask_inputs(self, inputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        B, G, _ = masks.shape
        up = upsample_nearest(masks, self.cell_grid, self.input_shape[1:])
        x = inputs.unsqueeze(1) * up.unsqueeze(2).to(inputs.dtype)
        return x.reshape(B * G, *inputs.shape[1:])

    def masks_to_input(self, masks: torch.Tensor, inputs: Any = None) -> torch.Tensor:
        return upsample_nearest(masks, self.cell_grid, self.input_shape[1:])

    # layers
    def named_layers(self) -> dict[str, nn.Module]:
        """Every leaf module but the classifier and dropout (see the base class), and the feature
        layer even where it is a container."""
        layers = super().named_layers()
        if self.feature_layer not in layers:
            layers = {self.feature_layer: dict(self.model.named_modules())[self.feature_layer], **layers}
        return layers

    def default_layer(self) -> str:
        """The feature layer (the one whose output gives the generator's cells)."""
        return self.feature_layer

    def layer_positions(self, name: str) -> int:
        """2 for a layer that outputs ``(B, K, h, w)``, 0 for ``(B, K)``: read from one forward
        pass of a zero image (the result is kept per layer name)."""
        module = self.layer(name)
        cache = self.__dict__.setdefault("_layer_positions", {})
        if name not in cache:
            seen: list[Any] = []
            handle = module.register_forward_hook(lambda m, a, out: seen.append(out))
            try:
                with torch.no_grad():
                    self.model(torch.zeros(1, *self.input_shape, device=self.device))
            finally:
                handle.remove()
            out = seen[0] if seen else None
            out = out[0] if isinstance(out, tuple) else out
            if not isinstance(out, torch.Tensor):
                raise InputError(f"layer {name!r} produced no tensor in a forward pass of the CNN")
            cache[name] = 2 if out.ndim == 4 else 0
        positions: int = cache[name]
        return positions

    def encoder_layers(self, encoder: nn.Module) -> dict[str, nn.Module]:
        """The copy's layers up to the feature layer (the copy stops there), same names, in the
        model's registration order."""
        copies = dict(cast(nn.Module, encoder.net).named_modules())
        layers = self.named_layers()
        order = [n for n, _ in self.model.named_modules() if n in layers]
        inside = [i for i, n in enumerate(order) if n == self.feature_layer or n.startswith(self.feature_layer + ".")]
        return {name: copies[name] for name in order[: (inside[-1] + 1) if inside else 0]}

    def spec(self) -> dict[str, Any]:
        """The adapter's settings and the CNN's *registered name* and constructor arguments.

        A CNN class that is not registered (:func:`~sumofparts.adapters.register_backbone`)
        is written with ``architecture: null``: loading such a checkpoint needs the model
        itself (``backbone=``). ``class_name`` is for messages only and is never imported.
        """
        cls = type(self.model)
        init_kwargs = getattr(self.model, "init_kwargs", None)
        return {
            "family": self.family,
            "architecture": registered_name(self.model),
            "architecture_kwargs": dict(init_kwargs) if init_kwargs is not None else {},
            "class_name": f"{cls.__module__}.{cls.__qualname__}",
            "feature_layer": self.feature_layer,
            "classifier": self.classifier_name,
            "grid": list(self.cell_grid),
            "input_shape": list(self.input_shape),
            "group_batch_size": self.group_batch_size,
        }

    @classmethod
    def canonical_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """The 0.1 layout (``factory``) in the current one, for comparisons."""
        upgraded: dict[str, Any] = _upgrade_legacy_spec(spec, True, "")
        return upgraded

    @classmethod
    def from_spec(cls, spec: dict[str, Any], model: nn.Module | None = None, *, where: str = "") -> "CNNAdapter":
        """Rebuild from :meth:`spec`: the registered CNN class (checked arguments) or ``model``.

        Checkpoints of sumofparts 0.1 name the class as ``factory: "module:Class"``; the
        project's own classes are mapped to their registered names
        (:data:`~sumofparts.adapters.registry.LEGACY_FACTORIES`) without importing
        anything; any other factory string is refused unless ``model`` is given.
        """
        spec = _upgrade_legacy_spec(spec, model is not None, where)
        s = check_fields(spec, CNN_SPEC_FIELDS, where=f"{where}backbone.", require=True)
        if model is None:
            if s["architecture"] is None:
                raise UnsafeCheckpointError(
                    f"{where}the CNN class {s.get('class_name')!r} is not a registered backbone, so it cannot be "
                    "rebuilt from the checkpoint. " + pass_backbone_hint("the CNN")
                    + " (or register its class with sumofparts.adapters.register_backbone)")
            model = build_backbone(s["architecture"], s["architecture_kwargs"], where=where)
        return cls(model, feature_layer=s["feature_layer"], classifier=s["classifier"], grid=tuple(s["grid"]),
                   input_shape=tuple(s["input_shape"]), group_batch_size=s["group_batch_size"])


def _upgrade_legacy_spec(spec: Any, have_model: bool, where: str) -> Any:
    """A 0.1 spec (``factory``/``factory_kwargs``) in the current layout, by table lookup only."""
    if not isinstance(spec, dict) or "factory" not in spec:
        return spec
    spec = dict(spec)
    factory = spec.pop("factory")
    kwargs = spec.pop("factory_kwargs", {})
    name = LEGACY_FACTORIES.get(factory) if isinstance(factory, str) else None
    if name is None and not have_model:
        raise UnsafeCheckpointError(
            f"{where}the checkpoint names its CNN by the factory string {factory!r}, which is not one of the "
            "project's own classes; sumofparts never imports a module named by a file. "
            + pass_backbone_hint("the CNN"))
    spec.setdefault("architecture", name)
    spec.setdefault("architecture_kwargs", kwargs)
    spec.setdefault("class_name", factory.replace(":", ".") if isinstance(factory, str) else None)
    return spec
