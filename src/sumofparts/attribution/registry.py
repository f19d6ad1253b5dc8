"""The attribution registry: every method by its stable lowercase name (see docs/methods.md)."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from ..adapters.base import BackboneAdapter
from ..errors import ConfigError, InputTypeError
from .bagnet import BagNetMethod
from .base import AttributionMethod
from .gradient import GRADIENT_METHODS
from .grouped import FRESH, FConversion, SOPMethod
from .layer import LAYER_METHODS, NEURON_METHODS
from .perturbation import PERTURBATION_METHODS

__all__ = ["POST_HOC_METHODS", "SELF_ATTRIBUTING_METHODS", "available_methods", "get_method", "method_class",
           "takes_option"]

#: post-hoc methods: name -> class (each also has a "<name>-f" form)
POST_HOC_METHODS: dict[str, type[AttributionMethod]] = {**GRADIENT_METHODS, **PERTURBATION_METHODS, **LAYER_METHODS,
                                                         **NEURON_METHODS}
#: self-attributing methods: name -> class
SELF_ATTRIBUTING_METHODS: dict[str, type[AttributionMethod]] = {"fresh": FRESH, "bagnet": BagNetMethod,
                                                                  "sop": SOPMethod}


def method_class(name: str) -> type[AttributionMethod] | None:
    """The class behind a registry name (for ``"<name>-f"``: the wrapped post-hoc method's), or ``None``."""
    key = str(name).strip().lower()
    base = key[:-2] if key.endswith("-f") else key
    return POST_HOC_METHODS.get(base) or (SELF_ATTRIBUTING_METHODS.get(base) if base == key else None)


def takes_option(name: str, option: str) -> bool:
    """Whether the method called ``name`` accepts the keyword option ``option`` (e.g. ``seed``, ``task``)."""
    cls = method_class(name)
    if cls is None:
        return False
    if option in getattr(cls, "defaults", {}):
        return True
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and option in inspect.signature(init).parameters:
            return True
    return False


def available_methods(*, include_f: bool = True, adapter: BackboneAdapter | None = None) -> list[str]:
    """The registry's names: post-hoc, then self-attributing, then the "-F" forms.

    ``adapter``: only the methods whose required capabilities it has.
    """
    def ok(cls: type[AttributionMethod]) -> bool:
        return adapter is None or not cls.missing_capabilities(adapter)

    names = [n for n, c in POST_HOC_METHODS.items() if ok(c)]
    names += [n for n, c in SELF_ATTRIBUTING_METHODS.items() if ok(c)]
    if include_f:
        names += [f"{n}-f" for n, c in POST_HOC_METHODS.items() if ok(c)]
    return names


def get_method(name: str, adapter: BackboneAdapter, **options: Any) -> AttributionMethod:
    """Build the method called ``name`` for ``adapter``.

    ``options`` are the method's own (see docs/methods.md); ``"<name>-f"`` takes ``tau``
    (default 0.2) plus the wrapped method's options. ``"sop"`` takes ``model=`` a
    SumOfParts (``adapter`` may then be None: the model's own backbone is used).
    """
    if not isinstance(name, str):
        raise InputTypeError(f"method name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    factory: Callable[..., AttributionMethod] | None = None
    if key.endswith("-f"):
        base = key[:-2]
        if base in POST_HOC_METHODS:
            tau = options.pop("tau", 0.2)
            tie_seed = options.pop("tie_seed", 0)
            return FConversion(POST_HOC_METHODS[base](adapter, **options), tau=tau, tie_seed=tie_seed)
        if base in SELF_ATTRIBUTING_METHODS:
            raise ConfigError(f"{base!r} is already self-attributing; '-f' applies to the post-hoc methods "
                             f"({', '.join(POST_HOC_METHODS)})")
    else:
        factory = POST_HOC_METHODS.get(key) or SELF_ATTRIBUTING_METHODS.get(key)
    if factory is None:
        raise ConfigError(f"unknown method {name!r}; expected one of {', '.join(available_methods())}")
    if key == "sop":
        return SOPMethod(adapter, **options)
    if adapter is None:
        raise InputTypeError(f"method {key!r} needs a BackboneAdapter, got None")
    return factory(adapter, **options)
