"""The fault registry: the one place that knows which fault kinds exist.

Each kind module of this package (``hwfault/faults/<kind>.py``) declares, for its kind(s), the
config schema (a :class:`~hwfault.faults.config.FaultConfig`: the ``[[faults]]`` entry of a chip
spec), the fault model (a :class:`~hwfault.faults.base.FaultModel`: sampler, covering set,
severity scaling, describe) and a one-line summary for ``hwfault chips show``, and hands them to
:func:`register`. The registry finds the kind modules itself: on first use it imports every
module of the package (``pkgutil.iter_modules``; names starting with ``_`` are skipped), so a new
kind is one new file, with no list to edit. Everything else is derived from it: the spec's
discriminated union of fault entries, ``FAULT_KINDS``, the glossary of the summary, and
:func:`build_fault`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import SpecError, did_you_mean
from .base import FaultModel
from .config import FaultConfig

__all__ = ["FaultKind", "register", "kinds", "names", "get", "build_fault", "DEFAULT_ORDER"]

DEFAULT_ORDER = 1000.0  # a kind that gives no order is listed after the built-in ones

_REGISTRY: dict[str, FaultKind] = {}
_discovered = False


@dataclass(frozen=True)
class FaultKind:
    """One registered fault kind.

    ``summary(cfg)`` is the plain-words line of ``hwfault chips show`` for one entry;
    ``args(cfg)`` maps a config to the model's constructor arguments (by default: the config fields
    that the model's dataclass also has, by name); ``order`` is the kind's place in listings
    (``FAULT_KINDS``, error messages); ``module`` the module that defines the config.
    """

    kind: str
    config: type[FaultConfig]
    model: type[FaultModel]
    summary: Callable[[FaultConfig], str]
    args: Callable[[FaultConfig], dict] | None = None
    order: float = DEFAULT_ORDER
    module: str = ""

    def model_args(self, cfg: FaultConfig) -> dict:
        if self.args is not None:
            return dict(self.args(cfg))
        return {name: getattr(cfg, name) for name in _shared_fields(self.config, self.model)}

    def build(self, cfg: FaultConfig | Mapping) -> FaultModel:
        """The fault model of one ``[[faults]]`` entry (a config of this kind, or a mapping that
        validates as one)."""
        if not isinstance(cfg, self.config):
            cfg = self.config.model_validate(cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg))
        return self.model(**self.model_args(cfg))


def _shared_fields(config: type[FaultConfig], model: type[FaultModel]) -> list[str]:
    return [f.name for f in dataclasses.fields(model) if f.init and f.name in config.model_fields]


def _literal_kind(config: type[FaultConfig]) -> str | None:
    field = config.model_fields.get("kind")
    if field is None or typing.get_origin(field.annotation) is not typing.Literal:
        return None
    args = typing.get_args(field.annotation)
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


def register(*, kind: str, config: type[FaultConfig], model: type[FaultModel],
             summary: str | Callable[[FaultConfig], str], args: Callable[[FaultConfig], dict] | None = None,
             order: float = DEFAULT_ORDER) -> FaultKind:
    """Register a fault kind (call it at import time of the kind's module).

    ``config`` must be a :class:`FaultConfig` with ``kind: Literal["<kind>"]``; ``model`` a
    :class:`FaultModel` dataclass with ``kind = "<kind>"``; ``summary`` a string or a function of the
    config. Without ``args``, the model is built from the config fields it shares by name (every
    model field without a default must be one of them).
    """
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"fault kind: expected an identifier, got {kind!r}")
    if not (isinstance(config, type) and issubclass(config, FaultConfig)):
        raise TypeError(f"fault kind '{kind}': config must subclass hwfault.faults.config.FaultConfig")
    if _literal_kind(config) != kind:
        raise TypeError(f"fault kind '{kind}': {config.__name__} needs the field kind: Literal['{kind}']")
    if not (isinstance(model, type) and issubclass(model, FaultModel) and dataclasses.is_dataclass(model)):
        raise TypeError(f"fault kind '{kind}': model must be a FaultModel dataclass")
    if model.kind != kind:
        raise TypeError(f"fault kind '{kind}': {model.__name__}.kind is '{model.kind}'")
    if args is None:
        shared = set(_shared_fields(config, model))
        missing = [f.name for f in dataclasses.fields(model) if f.init and f.name not in shared
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise TypeError(f"fault kind '{kind}': {model.__name__} needs {', '.join(missing)}, which "
                            f"{config.__name__} lacks (give args=...)")
    text = summary
    line = (lambda cfg: text) if isinstance(summary, str) else summary
    module = config.__module__
    entry = FaultKind(kind, config, model, line, args, float(order), module)
    old = _REGISTRY.get(kind)
    if old is not None and old.module != module:
        raise ValueError(f"fault kind '{kind}' registered twice: by {old.module} and by {module}")
    _REGISTRY[kind] = entry  # the same module again (a reload) replaces its entry
    return entry


def _discover() -> None:
    """Import every module of this package once, so that each kind module registers its kinds."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = __name__.rpartition(".")[0]
    try:
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")
    except BaseException:
        _discovered = False
        raise


def kinds() -> tuple[FaultKind, ...]:
    """Every registered kind, in listing order (``order``, then name)."""
    _discover()
    return tuple(sorted(_REGISTRY.values(), key=lambda k: (k.order, k.kind)))


def names() -> tuple[str, ...]:
    """The registered kind names, in listing order."""
    return tuple(k.kind for k in kinds())


def get(kind: str) -> FaultKind:
    _discover()
    try:
        return _REGISTRY[kind]
    except (KeyError, TypeError):
        raise SpecError(f"unknown fault kind {kind!r}{did_you_mean(str(kind), names())}") from None


def build_fault(cfg) -> FaultModel:
    """A fault model from one validated ``[[faults]]`` entry of a chip spec (or a mapping with ``kind``)."""
    kind = getattr(cfg, "kind", None) if not isinstance(cfg, Mapping) else cfg.get("kind")
    return get(kind).build(cfg)
