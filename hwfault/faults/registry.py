"""The fault registry: the one place that knows which fault kinds exist.

Each kind module of this package (``hwfault/faults/<kind>.py``) declares, for its kind(s), the
config schema (a :class:`~hwfault.faults.config.FaultConfig`: the ``[[faults]]`` entry of a chip
spec), the fault model (a :class:`~hwfault.faults.base.FaultModel`: sampler, covering set,
severity scaling, describe) and a one-line summary for ``hwfault chips show``, and hands them to
:func:`register`. The registry finds the kind modules itself: on first use it imports every
module of the package (``pkgutil.iter_modules``; names starting with ``_``, subpackages and the
device model's own modules, :data:`NOT_KINDS`, are skipped), so a new kind is one new file, with no
list to edit. Everything else is derived from it: the spec's discriminated union of fault entries,
``FAULT_KINDS``, the glossary of the summary, and :func:`build_fault`.

Reading a chip spec needs only the schemas and summaries, so this module and the built-in kind
modules import no torch: they name their model as ``"module:Class"`` (in ``hwfault/faults/models/``),
which is imported on first use of :attr:`FaultKind.model` (building a chip for a model). A kind may
also pass the class itself (then its module's imports are paid when the spec is read).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import SpecError, did_you_mean
from .config import FaultConfig

if typing.TYPE_CHECKING:
    from .base import FaultModel

__all__ = ["FaultKind", "register", "kinds", "names", "get", "build_fault", "lazy_attribute", "DEFAULT_ORDER",
           "NOT_KINDS"]

DEFAULT_ORDER = 1000.0  # a kind that gives no order is listed after the built-in ones
#: the modules of this package that declare no kind (the device model itself, which imports torch):
#: discovery skips them, so that reading a chip spec stays free of torch
NOT_KINDS = frozenset({"base", "chip", "config", "physics", "quantization", "registry"})

_REGISTRY: dict[str, FaultKind] = {}
_discovered = False


@dataclass(frozen=True)
class FaultKind:
    """One registered fault kind.

    ``summary(cfg)`` is the plain-words line of ``hwfault chips show`` for one entry;
    ``args(cfg)`` maps a config to the model's constructor arguments (by default: the config fields
    that the model's dataclass also has, by name); ``order`` is the kind's place in listings
    (``FAULT_KINDS``, error messages); ``module`` the module that defines the config.
    ``model_ref`` is the model class or where it lives (``"module:Class"``, the module relative to
    ``module``'s package when it starts with a dot); :attr:`model` is the class, imported and
    checked on first use.
    """

    kind: str
    config: type[FaultConfig]
    model_ref: type[FaultModel] | str
    summary: Callable[[FaultConfig], str]
    args: Callable[[FaultConfig], dict] | None = None
    order: float = DEFAULT_ORDER
    module: str = ""

    @functools.cached_property
    def model(self) -> type[FaultModel]:
        """The fault model class (imports its module on first use: torch)."""
        ref = self.model_ref
        if not isinstance(ref, str):
            return ref
        where, _, name = ref.partition(":")
        model = getattr(importlib.import_module(where, self.module.rpartition(".")[0] or None), name)
        _check_model(self.kind, self.config, model, self.args)
        return model

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


def _check_model(kind: str, config: type[FaultConfig], model, args) -> None:
    from .base import FaultModel  # torch: only once a model class exists

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


def register(*, kind: str, config: type[FaultConfig], model: type[FaultModel] | str,
             summary: str | Callable[[FaultConfig], str], args: Callable[[FaultConfig], dict] | None = None,
             order: float = DEFAULT_ORDER) -> FaultKind:
    """Register a fault kind (call it at import time of the kind's module).

    ``config`` must be a :class:`FaultConfig` with ``kind: Literal["<kind>"]``; ``model`` a
    :class:`FaultModel` dataclass with ``kind = "<kind>"``, or where it lives, ``"module:Class"``
    (imported, and checked, when a chip is first built; a module starting with a dot is relative to
    the package of ``config``'s module); ``summary`` a string or a function of the config. Without
    ``args``, the model is built from the config fields it shares by name (every model field without
    a default must be one of them).
    """
    if not isinstance(kind, str) or not kind.replace("-", "_").isidentifier():
        raise ValueError(f"fault kind: expected an identifier (hyphens allowed), got {kind!r}")
    if not (isinstance(config, type) and issubclass(config, FaultConfig)):
        raise TypeError(f"fault kind '{kind}': config must subclass hwfault.faults.config.FaultConfig")
    if _literal_kind(config) != kind:
        raise TypeError(f"fault kind '{kind}': {config.__name__} needs the field kind: Literal['{kind}']")
    if isinstance(model, str):
        if model.count(":") != 1 or not all(model.partition(":")[::2]):
            raise ValueError(f"fault kind '{kind}': model must be a class or 'module:Class', got {model!r}")
    else:
        _check_model(kind, config, model, args)
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
            if not (info.name.startswith("_") or info.ispkg or info.name in NOT_KINDS):
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


def lazy_attribute(module: str, target: str, name: str):
    """Attribute ``name`` of the module ``target`` (relative to the package of ``module`` when it starts
    with a dot), for a kind module's ``__getattr__``: its fault models stay reachable by their old
    names (``hwfault.faults.analog.Additive``), and torch is imported only when one is asked for."""
    missing = AttributeError(f"module '{module}' has no attribute '{name}'")
    if name.startswith("__"):  # introspection (copy, pickle, inspect) imports nothing
        raise missing
    try:
        return getattr(importlib.import_module(target, module.rpartition(".")[0]), name)
    except AttributeError:
        raise missing from None


def build_fault(cfg) -> FaultModel:
    """A fault model from one validated ``[[faults]]`` entry of a chip spec (or a mapping with ``kind``)."""
    kind = getattr(cfg, "kind", None) if not isinstance(cfg, Mapping) else cfg.get("kind")
    return get(kind).build(cfg)
