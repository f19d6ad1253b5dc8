"""Layer and neuron attribution through Captum, behind the project's interface.

The backbone adapter names the layers (``adapter.named_layers()``) and shows each one as
``(B, K, *positions)`` (``adapter.layer_view(name)``): K units at each position, the
positions laid out like the cells (a CNN feature map ``(h, w)``; a ViT's patch tokens on the
patch grid, CLS left out; a BERT's token sequence ``(L,)``). The methods here never ask which
family a backbone is: they ask the adapter for the layer, its view and its number of position
axes (``adapter.layer_positions(name)``).

**Layer methods** explain the output ``f_t`` (as every other method does) with scores on a
layer's units. ``attribute_layer(x, t)`` returns Captum's result on the view, ``(B, K,
*positions)``; the map is that summed over the K units (``neuron_reduce="sum"``; Layer
Activation takes the L2 norm over K, an activation's magnitude):

* ``attribute(x, t)``: the map at the input's resolution, shown like every other map: images
  ``(B, C, H, W)`` (``LayerAttribution.interpolate`` from ``(h, w)`` to ``(H, W)``, the same
  value on every channel), tokens ``(B, L)``.
* ``attribute_cells(x, t)``: ``(B, N)``, the map's mass on each cell: each layer position covers
  an equal rectangle of the image, and a cell gets the share of every position's value that
  its rectangle overlaps (:func:`area_resample`). The total is kept, so where the layer
  attribution is complete (Layer IG, Layer Conductance: ``Σ = f_t(x) − f_t(x̄)`` at that layer)
  the cells are too. Where the layer's grid is the cell grid (ViT layers, BERT layers, a CNN's
  feature layer) this is the map itself.

**Neuron methods** explain one unit of a layer instead of the output: ``neuron=(k, *position)``
indexes the layer's view ``(K, *positions)`` (a CNN channel at a feature-map cell, a ViT hidden
unit at a patch, a BERT hidden unit at a token, or ``(k,)`` for a layer without positions);
``neuron=None`` takes, for each input, its most active unit of the layer. ``attribute(x)``
returns the unit's attribution to the input features, shaped like the input (text: per token,
as for the input methods). The target is not used (Neuron Gradient, Neuron IG) or is the
output whose flow through the unit is measured (Neuron Conductance). What the evaluation's
metrics can say about such a map is listed by :meth:`NeuronMethod.inapplicable_metrics`.
"""
from __future__ import annotations

from typing import Any, Sequence, cast

import torch
from torch import nn

from ..adapters.base import BackboneAdapter, Inputs
from .base import check_target
from .captum import CaptumMethod, _captum, quiet_captum
from ..errors import InputError, InputTypeError

__all__ = ["LayerMethod", "LayerIntegratedGradients", "LayerGradCAM", "LayerConductance", "LayerActivation",
           "LayerGradientXActivation", "NeuronMethod", "NeuronIntegratedGradients", "NeuronConductance",
           "NeuronGradient", "LAYER_METHODS", "NEURON_METHODS", "area_resample"]

_INTERPOLATE_MODES = ("nearest", "bilinear", "bicubic", "area")


def _interval_overlap(n_from: int, n_to: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(n_to, n_from)``: the share of source interval j = [j/n_from, (j+1)/n_from) lying in
    target interval i = [i/n_to, (i+1)/n_to). Every column sums to 1."""
    if n_from == n_to:
        return torch.eye(n_to, dtype=dtype, device=device)
    # exact in integers: interval j is [j·n_to, (j+1)·n_to) on a grid of n_from·n_to units
    src = torch.arange(n_from + 1, device=device) * n_to
    dst = torch.arange(n_to + 1, device=device) * n_from
    lo = torch.maximum(dst[:-1, None], src[None, :-1])
    hi = torch.minimum(dst[1:, None], src[None, 1:])
    return ((hi - lo).clamp_min(0).to(dtype)) / n_to


def area_resample(values: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, gh, gw)``, keeping the total.

    Position ``(i, j)`` of the ``h×w`` grid covers the rectangle ``[i/h, (i+1)/h) × [j/w,
    (j+1)/w)`` of the image; output cell ``(a, b)`` gets ``Σ_ij values[i, j] · share of (i, j)'s
    rectangle inside cell (a, b)``, i.e. ``R @ values @ Cᵀ`` with ``R: (gh, h)`` and ``C: (gw,
    w)`` the interval overlaps. Each position's value is split among the cells it overlaps, so
    ``out.sum((1, 2)) == values.sum((1, 2))`` (up to rounding).
    """
    if values.ndim != 3:
        raise InputError(f"expected values of shape (B, h, w), got shape {tuple(values.shape)}")
    gh, gw = (int(v) for v in size)
    if tuple(values.shape[1:]) == (gh, gw):
        return values
    rows = _interval_overlap(values.shape[1], gh, values.dtype, values.device)
    cols = _interval_overlap(values.shape[2], gw, values.dtype, values.device)
    return rows @ values @ cols.T


class _InternalMethod(CaptumMethod):
    """What layer and neuron methods share: the named layer, an optional target, Captum on the view."""

    #: needs a target (the output explained); otherwise a given target is checked and ignored
    requires_target: bool = True
    #: keyword arguments of the Captum class's constructor
    constructor_kwargs: dict[str, Any] = {}

    def __init__(self, adapter: BackboneAdapter, *, seed: int | None = 0, layer: str | None = None,
                 **options: Any):
        super().__init__(adapter, seed=seed, **options)
        if layer is None:
            layer = adapter.default_layer()
        adapter.layer(layer)  # an unknown name raises, listing the valid ones
        self.layer_name = layer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, adapter={type(self.adapter).__name__}, layer={self.layer_name!r})"

    def _prepare(self, inputs: Inputs, target: Any) -> torch.Tensor | None:  # type: ignore[override]  # None: no target
        if target is None and not self.requires_target:
            self.adapter.validate(inputs)
            return None
        return check_target(target, self.adapter.batch_size(inputs), self.adapter.num_outputs, self.adapter.device)

    def _captum_call(self, view: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
                     call: dict[str, Any]) -> torch.Tensor:
        method = self.captum_class(self.forward_module().forward, view, **self.constructor_kwargs)
        if self.requires_target:
            call = {**call, "target": target}
        with quiet_captum():
            return method.attribute(x, **call)


class LayerMethod(_InternalMethod):
    """A Captum layer method on a named layer of the backbone: scores on the layer's units for ``f_t``.

    Options (besides Captum's): ``layer`` (a name from ``adapter.named_layers()``; default
    ``adapter.default_layer()``), ``interpolate_mode`` (how ``attribute`` brings an image map
    to the input: ``"bilinear"`` by default, or ``"nearest"``, ``"bicubic"``, ``"area"``).
    """

    requires = frozenset({"layer_map"})
    #: how the K units of a position become one value: "sum" or "norm" (L2)
    neuron_reduce: str = "sum"

    def __init__(self, adapter: BackboneAdapter, *, seed: int | None = 0, layer: str | None = None,
                 interpolate_mode: str = "bilinear", **options: Any):
        super().__init__(adapter, seed=seed, layer=layer, **options)
        if interpolate_mode not in _INTERPOLATE_MODES:
            raise InputError(f"interpolate_mode must be one of {', '.join(_INTERPOLATE_MODES)}, "
                             f"got {interpolate_mode!r}")
        self.interpolate_mode = interpolate_mode
        self.positions = adapter.layer_positions(self.layer_name)
        if self.positions == 0:
            raise InputError(f"layer {self.layer_name!r} has no positions on the input (its units are not laid out "
                             f"like the cells), so a layer map cannot be drawn; name a layer with positions, e.g. "
                             f"{adapter.default_layer() if self._has_default() else 'a convolution or encoder block'}")

    def _has_default(self) -> bool:
        try:
            self.adapter.default_layer()
        except ValueError:
            return False
        return True

    # -- the layer attribution ----------------------------------------------------------------------
    def attribute_layer(self, inputs: Inputs, target: Any = None, **kwargs: Any) -> torch.Tensor:
        """Captum's attribution on the layer's view: ``(B, K, *positions)`` (Grad-CAM: K = 1)."""
        t = self._prepare(inputs, target)
        return self._layer(inputs, t, **kwargs)

    def _layer(self, inputs: Inputs, target: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        x, base_kwargs = self.captum_inputs(inputs)
        call = {**base_kwargs, **self.call_kwargs(kwargs, x)}
        with self.adapter.layer_view(self.layer_name) as view:
            attr = self._captum_call(view, x, target, call)
        return attr.detach()

    def _map(self, inputs: Inputs, target: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        """``(B, *positions)``: the layer attribution reduced over the units."""
        attr = self._layer(inputs, target, **kwargs)
        if self.neuron_reduce == "norm":
            return attr.norm(dim=1)
        return attr.sum(1)

    def layer_map(self, inputs: Inputs, target: Any = None, **kwargs: Any) -> torch.Tensor:
        """``(B, *positions)``: the layer attribution summed over the units (Layer Activation: their L2 norm)."""
        return self._map(inputs, self._prepare(inputs, target), **kwargs)

    # -- the interface ------------------------------------------------------------------------------
    def _attribute(self, inputs: Inputs, target: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        """The layer map at the input's resolution (what ``attribute`` returns): ``(B, C, H, W)``
        images (interpolated, every channel the same), ``(B, L)`` tokens."""
        m = self._map(inputs, target, **kwargs)
        if self.positions == 1:
            return m  # tokens: (B, L)
        x = inputs
        up = _captum().LayerAttribution.interpolate(m.unsqueeze(1), tuple(x.shape[2:]),
                                                    interpolate_mode=self.interpolate_mode)
        return up.expand(-1, x.shape[1], -1, -1).contiguous()

    def attribute_cells(self, inputs: Inputs, target: Any = None, **kwargs: Any) -> torch.Tensor:
        """``(B, N)``: the map's mass on each cell (see the module docs); sums to the map's total."""
        t = self._prepare(inputs, target)
        m = self._map(inputs, t, **kwargs)
        if self.positions == 1:
            return m.to(torch.float32)
        cells = area_resample(m.to(torch.float64), cast(tuple[int, int], self.adapter.cell_grid))  # positions 2: a grid
        return cells.reshape(cells.shape[0], -1).to(torch.float32)


class LayerIntegratedGradients(LayerMethod):
    """Layer IG: ``(a − ā) ⊙ ∫₀¹ ∂f_t/∂a (ā + α(a − ā)) dα`` for the layer's output a at x and ā
    at the baseline x̄ (0 for images, ``[MASK]`` embeddings for text); sums to ``f_t(x) − f_t(x̄)``
    over the layer's units (the rest of the network held at x where the view leaves it: a ViT's
    CLS token). ``n_steps`` forward and backward passes."""

    name = "layer_intgrad"
    completeness = "baseline"  # Σ over the layer (and so over the cells) = f_t(x) − f_t(x̄)
    multiplies_by_inputs = True
    defaults = {"n_steps": 50, "method": "gausslegendre", "internal_batch_size": None}
    uses_baselines = True

    @property
    def captum_class(self):
        return _captum().LayerIntegratedGradients


class LayerGradCAM(LayerMethod):
    """Layer Grad-CAM: ``ReLU(Σ_k α_k a_k)``, ``α_k`` the mean over positions of ``∂f_t/∂a_k``, on
    any named layer. (``gradcam`` is this at the default layer with its cells pooled from the
    bilinear map; here the cells are the map's exact mass.) One forward and one backward pass."""

    name = "layer_gradcam"
    not_additive = ("a ReLU'd class-activation map of a layer: its cells are not meant to add up to the output")
    defaults = {"relu_attributions": True}

    @property
    def captum_class(self):
        return _captum().LayerGradCam


class LayerConductance(LayerMethod):
    """Layer Conductance: ``Σ_i (x_i − x̄_i) ∫₀¹ ∂f_t/∂a_k · ∂a_k/∂x_i dα`` along the straight path
    from x̄ to x in the *input*: the flow of IG through each unit; sums to ``f_t(x) − f_t(x̄)``
    over a layer every path crosses. ``n_steps`` forward and backward passes."""

    name = "layer_conductance"
    completeness = "baseline"  # Σ over a layer every path crosses = f_t(x) − f_t(x̄)
    multiplies_by_inputs = True
    defaults = {"n_steps": 50, "method": "gausslegendre", "internal_batch_size": None}
    uses_baselines = True

    @property
    def captum_class(self):
        return _captum().LayerConductance


class LayerActivation(LayerMethod):
    """Layer Activation: the layer's output itself, ``a``; the map is its L2 norm over the units at
    each position. It does not depend on the target (a given target is checked, then ignored).
    One forward pass."""

    name = "layer_activation"
    not_additive = "activations, not shares of the output"
    requires_target = False
    neuron_reduce = "norm"

    @property
    def captum_class(self):
        return _captum().LayerActivation

    def inapplicable_metrics(self) -> dict[str, str]:
        return {"fidelity": "Layer Activation does not depend on the class: every class gets the same map, so the "
                            "class sums that fidelity compares with the output are all equal"}


class LayerGradientXActivation(LayerMethod):
    """Layer Gradient × Activation: ``a ⊙ ∂f_t/∂a`` (first-order Taylor term of each unit). One
    forward and one backward pass."""

    name = "layer_gradxactivation"
    not_additive = ("first-order contributions of the units measured from a zero activation of that layer, not "
                    "from the empty input: no reference the model can be run at")
    multiplies_by_inputs = True

    @property
    def captum_class(self):
        return _captum().LayerGradientXActivation


# ---------------------------------------------------------------------------------------------
# neurons
# ---------------------------------------------------------------------------------------------
class NeuronMethod(_InternalMethod):
    """A Captum neuron method: one unit of a named layer attributed to the input features.

    Options (besides Captum's): ``layer`` (default ``adapter.default_layer()``) and ``neuron``:
    a tuple of ints indexing the layer's view ``(K, *positions)`` without the batch axis, or
    ``None`` for each input's most active unit of the layer. An index of the wrong length or
    out of range raises a ``ValueError`` naming the layer's layout.
    """

    requires_target = False

    def __init__(self, adapter: BackboneAdapter, *, seed: int | None = 0, layer: str | None = None,
                 neuron: Sequence[int] | None = None, **options: Any):
        super().__init__(adapter, seed=seed, layer=layer, **options)
        if neuron is not None:
            if isinstance(neuron, int) and not isinstance(neuron, bool):
                neuron = (neuron,)
            if (isinstance(neuron, (str, bytes)) or not isinstance(neuron, Sequence) or not neuron
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in neuron)):
                raise InputTypeError(f"neuron must be a tuple of ints (unit, *position) indexing layer "
                                f"{self.layer_name!r}, or None; got {neuron!r}")
            neuron = tuple(int(i) for i in neuron)
        self.neuron: tuple[int, ...] | None = neuron

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, adapter={type(self.adapter).__name__}, "
                f"layer={self.layer_name!r}, neuron={self.neuron!r})")

    def inapplicable_metrics(self) -> dict[str, str]:
        unit = "each input's most active unit" if self.neuron is None else f"unit {self.neuron}"
        why = (f"{self.name} explains {unit} of layer {self.layer_name!r}, not the model's output, so the output's "
               "{what} says nothing about it")
        return {"prediction": why.format(what="prediction from its top cells"),
                "fidelity": why.format(what="match with the attribution's sum"),
                "insertion": why.format(what="insertion curve"), "deletion": why.format(what="deletion curve"),
                "infidelity": why.format(what="change under perturbations")}

    def layer_units(self, inputs: Inputs) -> torch.Tensor:
        """The layer's view on ``inputs``: ``(B, K, *positions)`` (one forward pass, no gradient)."""
        self.adapter.validate(inputs)
        x, base_kwargs = self.captum_inputs(inputs)
        with self.adapter.layer_view(self.layer_name) as view:
            return self._units(view, x, base_kwargs)

    def _units(self, view: nn.Module, x: torch.Tensor, base_kwargs: dict[str, Any]) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        handle = view.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
        try:
            extra = base_kwargs.get("additional_forward_args") or ()
            with torch.no_grad():
                self.forward_module()(x, *extra)
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError(f"layer {self.layer_name!r} was not called in the backbone's forward pass")
        return seen[0].detach()

    def check_neuron(self, index: Sequence[int], layout: Sequence[int]) -> tuple[int, ...]:
        """``index`` checked against the view's layout ``(K, *positions)``."""
        layout = tuple(int(v) for v in layout)
        names = "(K" + "".join(f", p{i + 1}" for i in range(len(layout) - 1)) + ")"
        if len(index) != len(layout) or any(not 0 <= i < n for i, n in zip(index, layout)):
            raise InputError(f"neuron {tuple(index)} is not a unit of layer {self.layer_name!r}, whose units are laid "
                             f"out as {names} = {layout}; expected {len(layout)} indices with 0 <= index < size")
        return tuple(index)

    def _attribute(self, inputs: Inputs, target: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        x, base_kwargs = self.captum_inputs(inputs)
        call = {**base_kwargs, **self.call_kwargs(kwargs, x)}
        with self.adapter.layer_view(self.layer_name) as view:
            units = self._units(view, x, base_kwargs)
            if self.neuron is not None:
                index = self.check_neuron(self.neuron, units.shape[1:])
                attr = self._captum_call(view, x, target, {**call, "neuron_selector": index})
            else:
                attr = self._per_input(view, x, target, call, units)
        return self.reduce(attr.detach())

    def _per_input(self, view: nn.Module, x: torch.Tensor, target: torch.Tensor | None, call: dict[str, Any],
                   units: torch.Tensor) -> torch.Tensor:
        """Each input's most active unit: one Captum call per distinct unit, on the inputs that chose it."""
        layout = units.shape[1:]
        flat = units.flatten(1).argmax(1)  # (B,)
        out: torch.Tensor | None = None
        for f in torch.unique(flat).tolist():
            rows = (flat == f).nonzero().squeeze(1)
            index = tuple(int(v) for v in torch.unravel_index(torch.tensor(f), layout))
            sub = {k: _rows(v, rows) for k, v in call.items()}
            t = target[rows] if target is not None else None
            a = self._captum_call(view, x[rows], t, {**sub, "neuron_selector": index})
            if out is None:
                out = torch.zeros((x.shape[0], *a.shape[1:]), dtype=a.dtype, device=a.device)
            out[rows] = a
        assert out is not None
        return out


def _rows(value: Any, rows: torch.Tensor) -> Any:
    """``value`` restricted to the inputs ``rows`` (tensors with a batch axis; tuples element-wise)."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value[rows]
    if isinstance(value, tuple):
        return tuple(_rows(v, rows) for v in value)
    return value


class NeuronIntegratedGradients(NeuronMethod):
    """Neuron IG: ``(x − x̄) ⊙ ∫₀¹ ∂u(x̄ + α(x − x̄))/∂x dα`` for the unit's value u; sums to
    ``u(x) − u(x̄)``. ``n_steps`` forward and backward passes."""

    name = "neuron_intgrad"
    defaults = {"n_steps": 50, "method": "gausslegendre", "internal_batch_size": None}
    uses_baselines = True

    @property
    def captum_class(self):
        return _captum().NeuronIntegratedGradients


class NeuronConductance(NeuronMethod):
    """Neuron Conductance: ``(x_i − x̄_i) ∫₀¹ ∂f_t/∂u · ∂u/∂x_i dα``, the part of input i's IG for
    the target ``f_t`` that flows through the unit u; sums to the unit's layer conductance.
    Needs a target. ``n_steps`` forward and backward passes (Captum's ``riemann_trapezoid``)."""

    name = "neuron_conductance"
    defaults = {"n_steps": 50, "method": "riemann_trapezoid", "internal_batch_size": None}
    uses_baselines = True
    requires_target = True

    @property
    def captum_class(self):
        return _captum().NeuronConductance


class NeuronGradient(NeuronMethod):
    """Neuron Gradient: ``∂u/∂x``. Text: the L1 norm over the embedding dimension per token. One
    forward and one backward pass."""

    name = "neuron_gradient"
    text_reduce = "abs_sum"

    @property
    def captum_class(self):
        return _captum().NeuronGradient


LAYER_METHODS: dict[str, type[LayerMethod]] = {
    cls.name: cls for cls in (LayerIntegratedGradients, LayerGradCAM, LayerConductance, LayerActivation,
                              LayerGradientXActivation)}
NEURON_METHODS: dict[str, type[NeuronMethod]] = {
    cls.name: cls for cls in (NeuronIntegratedGradients, NeuronConductance, NeuronGradient)}
