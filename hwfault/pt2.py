"""Loading a ``torch.export`` archive (``.pt2``) without running anything the file brings.

``torch.export.load`` trusts its file: it unpickles weights and constants marked ``use_pickle`` and
falls back to a full unpickler for sample inputs (``torch.load(weights_only=False)``, so a payload's
``__reduce__`` runs), passes the symbolic-shape strings of the graph to ``sympy.sympify`` (which
evaluates Python), unpickles opaque and TorchBind constants, and loads compiled AOTInductor code. A
model file from a colleague, a vendor or a model hub must not be able to do any of that, so before
torch sees the file :func:`check_archive` reads the archive as data and refuses it unless:

- it is a zip archive in the current torch.export layout (``archive_format`` = ``pt2``) whose entries
  all sit in known places; compiled code (``data/aotinductor/``, ExecuTorch, MTIA), pre-2.6 layouts,
  and opaque or TorchBind constants (arbitrary pickles) are refused;
- every payload torch would unpickle (``use_pickle`` weights and constants, the sample inputs, legacy
  state dicts) loads with ``torch.load(weights_only=True)``, PyTorch's restricted unpickler that
  builds tensors and plain containers only;
- every symbolic-shape expression is arithmetic over integers and shape symbols (an AST allowlist);
- every graph node calls an operator (``torch.ops.*``, ``_operator.*``, ``math.*``, ``torch.sym_*``);
- its entries are not a zip bomb (sizes bounded against the file's own size).

The load itself then runs with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` (belt and braces), and torch's own
log output (a 15-line traceback for a bad file) is captured into the one-line error.

A program exported without dynamic shapes (``torch.export.export(model, (x,))``) has its example's
batch size baked in and refuses any other. :func:`load_pt2` wraps such a program in a
:class:`FixedBatchModule`, which runs any batch in chunks of that size (the last one padded with
copies of its last row, whose outputs are dropped); programs with a dynamic batch are returned as
they are.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import re
import threading
import zipfile
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .errors import ModelError, first_line

MAX_ENTRIES = 100_000
#: bytes an archive may expand to, beyond its own size (torch stores entries uncompressed)
MAX_EXPANSION = 64 * 2**20
MAX_RATIO = 50

_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_ALLOWED = [re.compile(p) for p in (
    r"models/[^/]+\.json",
    r"data/weights/[^/]+",
    r"data/constants/[^/]+",
    r"data/sample_inputs/[^/]+\.pt",
    r"extra/.+",
)]
_REFUSED = {
    "data/aotinductor/": "compiled AOTInductor code (native code that would run on load)",
    "data/executorch/": "an ExecuTorch program",
    "data/mtia": "MTIA device code",
    "xl_model_weights/": "externally stored weights",
}
_TARGET = re.compile(r"(torch\.ops\.[A-Za-z_][\w.]*|_operator\.[a-z_]+|math\.[a-z_]+|torch\.sym_[a-z_]+|#.+)")

# sympy names a shape expression may call (torch.utils._sympy.functions and sympy's own arithmetic)
_SYMPY_CALLS = {
    "Symbol", "Integer", "Float", "Rational", "Max", "Min", "Mod", "Abs", "floor", "ceiling", "sqrt",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "Pow", "Mul", "Add",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "TruncToFloat", "TruncToInt",
    "IsNonOverlappingAndDenseIndicator", "RoundToInt", "RoundDecimal", "ToFloat", "OpaqueUnaryFn_sqrt",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "Identity", "Sum", "Product",
}
_SYMPY_NAMES = {"True", "False", "oo", "zoo", "nan", "S", "true", "false"}
_SYMBOL = re.compile(r"[a-z]{1,8}\d+")
_SYMBOL_KW = {"positive", "integer", "real", "nonnegative", "finite", "negative", "nonpositive", "zero",
              "even", "odd", "prime", "rational", "commutative"}
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Call, ast.Name, ast.Load,
          ast.Constant, ast.keyword, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
          ast.USub, ast.UAdd, ast.Not, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.And, ast.Or,
          ast.BitAnd, ast.BitOr, ast.LShift, ast.RShift)


def _refuse(path: Path, why: str):
    raise ModelError(f"{path}: refused: {why}; hwfault loads .pt2 files without running code from them")


def safe_shape_expression(text: str) -> bool:
    """True if ``text`` is integer arithmetic over shape symbols (what torch.export writes), and so
    safe to hand to ``sympy.sympify``: no attribute access, subscripts, strings other than symbol names,
    or calls other than sympy's arithmetic."""
    if not isinstance(text, str) or len(text) > 10_000 or "__" in text:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            return False
        if isinstance(node, ast.Name) and not (node.id in _SYMPY_CALLS or node.id in _SYMPY_NAMES
                                               or _SYMBOL.fullmatch(node.id)):
            return False
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, bool, str)):
            return False
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS):
                return False
            if node.func.id == "Symbol":
                if not (node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                        and _SYMBOL.fullmatch(node.args[0].value)):
                    return False
            if any(kw.arg not in _SYMBOL_KW for kw in node.keywords):
                return False
    strings = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return all(_SYMBOL.fullmatch(s.value) for s in strings)


def _walk(obj, key: str):
    """Every value stored under ``key`` anywhere in a JSON document."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k == key:
                    yield v
                if isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(o, list):
            stack.extend(v for v in o if isinstance(v, (dict, list)))


def _nodes(obj):
    """Every graph node (a dict with target, inputs and outputs) in a serialized program."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if "target" in o and "inputs" in o and "outputs" in o:
                yield o
            stack.extend(v for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list):
            stack.extend(v for v in o if isinstance(v, (dict, list)))


def _restricted_load(path: Path, name: str, data: bytes) -> None:
    """Refuse a pickled payload that PyTorch's restricted (tensors-only) unpickler rejects."""
    import torch

    try:
        with _torch_log_captured():
            torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # UnpicklingError for a forbidden global, and many for garbage
        text = str(e)
        found = re.search(r"unsupported GLOBAL (\S+)", text)
        why = f"it calls {found.group(1)}" if found else f"{type(e).__name__}: {first_line(e)}"
        _refuse(path, f"entry '{name}' is a pickle that holds more than tensors ({why})")


def check_archive(path: str | Path) -> None:
    """Read a ``.pt2`` archive as data and raise :class:`ModelError` unless it is safe to hand to
    ``torch.export.load`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a readable torch.export archive (not a zip file)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable torch.export archive ({type(e).__name__})") from None
    with zf:
        infos = zf.infolist()
        if not infos:
            raise ModelError(f"{path}: not a readable torch.export archive (an empty zip file)")
        if len(infos) > MAX_ENTRIES:
            _refuse(path, f"{len(infos):,} entries (at most {MAX_ENTRIES:,})")
        size = path.stat().st_size
        total = sum(i.file_size for i in infos)
        if total > size + MAX_EXPANSION or any(
                i.compress_type != zipfile.ZIP_STORED and i.file_size > MAX_RATIO * max(i.compress_size, 1)
                and i.file_size > 2**20 for i in infos):
            _refuse(path, f"its entries expand to {total:,} bytes from a {size:,}-byte file (a zip bomb?)")
        roots = {i.filename.split("/", 1)[0] for i in infos}
        if len(roots) != 1 or any("/" not in i.filename for i in infos):
            if any(i.filename in ("version", "serialized_exported_program.json") for i in infos):
                _refuse(path, "an archive in the torch.export format before torch 2.6, which loads through "
                              "pickle; export it again with a current torch")
            raise ModelError(f"{path}: not a readable torch.export archive (expected one top-level folder, "
                             f"found {', '.join(sorted(roots)[:4])})")
        root = roots.pop() + "/"
        inner = {i.filename[len(root):]: i for i in infos if not i.filename.endswith("/")}
        for name in inner:
            if ".." in name.split("/") or name.startswith("/"):
                _refuse(path, f"entry '{name}' points outside the archive")
            for prefix, what in _REFUSED.items():
                if name.startswith(prefix):
                    _refuse(path, f"it holds {what}")
            if name not in _FIXED and not any(p.fullmatch(name) for p in _ALLOWED):
                _refuse(path, f"unexpected entry '{name}' (not part of a torch.export archive)")

        def read(name: str) -> bytes:
            try:
                return zf.read(inner[name])
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
                raise ModelError(f"{path}: not a readable torch.export archive (entry '{name}': "
                                 f"{type(e).__name__})") from None

        def read_json(name: str):
            try:
                return json.loads(read(name).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                raise ModelError(f"{path}: not a readable torch.export archive (entry '{name}' is not JSON)") \
                    from None

        if "archive_format" not in inner or read("archive_format").decode("utf-8", "replace").strip() != "pt2":
            raise ModelError(f"{path}: not a readable torch.export archive (no 'archive_format' of 'pt2')")
        models = [n for n in inner if n.startswith("models/")]
        if not models:
            raise ModelError(f"{path}: not a readable torch.export archive (no program under models/)")
        for name in models:
            program = read_json(name)
            for expr in _walk(program, "expr_str"):
                if not safe_shape_expression(expr):
                    shown = str(expr)[:60]
                    _refuse(path, f"a symbolic shape in '{name}' is not shape arithmetic ('{shown}'), and torch "
                                  f"would evaluate it as Python")
            for node in _nodes(program):
                target = node.get("target")
                if not isinstance(target, str) or not _TARGET.fullmatch(target):
                    _refuse(path, f"a graph node in '{name}' calls '{str(target)[:60]}', which is not an operator")
            model = name[len("models/"):-len(".json")]
            sample = f"data/sample_inputs/{model}.pt"
            if sample in inner:
                _restricted_load(path, sample, read(sample))
            for kind in ("weights", "constants"):
                legacy = f"data/{kind}/{model}.pt"
                if legacy in inner:
                    _restricted_load(path, legacy, read(legacy))
                cfg_name = f"data/{kind}/{model}_{kind}_config.json"
                if cfg_name not in inner:
                    continue
                cfg = read_json(cfg_name)
                entries = cfg.get("config", {}) if isinstance(cfg, dict) else {}
                if not isinstance(entries, dict):
                    raise ModelError(f"{path}: not a readable torch.export archive ('{cfg_name}' has no config)")
                for fqn, meta in entries.items():
                    if not isinstance(meta, dict):
                        raise ModelError(f"{path}: not a readable torch.export archive ('{cfg_name}': '{fqn}')")
                    pname = str(meta.get("path_name", ""))
                    if pname.startswith(("custom_obj_", "opaque_obj_")):
                        _refuse(path, f"constant '{fqn}' is a pickled Python object ({pname})")
                    entry = f"data/{kind}/{pname}"
                    if entry not in inner:
                        raise ModelError(f"{path}: not a readable torch.export archive ({kind[:-1]} '{fqn}' "
                                         f"points at a missing entry '{pname}')")
                    if meta.get("use_pickle"):
                        _restricted_load(path, entry, read(entry))


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_LOCK = threading.Lock()


@contextlib.contextmanager
def _torch_log_captured():
    """Route torch's log records (it logs a traceback for a bad archive) into a list, not stderr."""
    logger = logging.getLogger("torch")
    cap = _Capture()
    saved, propagate = list(logger.handlers), logger.propagate
    logger.handlers, logger.propagate = [cap], False
    try:
        yield cap
    finally:
        logger.handlers, logger.propagate = saved, propagate


@contextlib.contextmanager
def _weights_only():
    """Force ``torch.load`` to its restricted unpickler for the duration (process-wide, under a lock)."""
    with _LOCK:
        saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def static_batch(ep) -> int | None:
    """The batch size baked into an ``ExportedProgram``: dim 0 of its first tensor user input when
    that is a fixed integer; None for a dynamic (symbolic) batch or no tensor input."""
    from torch.export.graph_signature import InputKind

    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for spec in ep.graph_signature.input_specs:
        if spec.kind != InputKind.USER_INPUT or getattr(spec.arg, "name", None) not in placeholders:
            continue
        val = placeholders[spec.arg.name].meta.get("val")
        if isinstance(val, torch.Tensor):
            dim = val.shape[0] if val.ndim else None
            return dim if type(dim) is int and dim >= 1 else None
    return None


def _symbolic_tracing() -> bool:
    fx = torch.fx._symbolic_trace
    return bool((getattr(fx, "is_fx_symbolic_tracing", None) or fx.is_fx_tracing)())


def _padded(t, batch: int):
    """``t`` (at most ``batch`` rows) grown to ``batch`` rows with copies of its last row (zeros if empty)."""
    if len(t) == batch:
        return t
    if len(t) == 0:
        return t.new_zeros((batch, *t.shape[1:]))
    return torch.cat([t, t[-1:].expand(batch - len(t), *t.shape[1:])])


_SHARED = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


class FixedBatchModule(nn.Module):
    """A ``torch.export`` program traced at one batch size, run on any batch size.

    ``forward`` cuts every tensor argument whose dim 0 is the batch into chunks of ``batch_size``
    rows (the last chunk padded with copies of its last row), runs ``program`` on each and joins
    the outputs' batched tensor leaves (tuples and dicts too) without the padding rows. Integer
    inputs pass through as they are. Gradients flow through. The module *is* the program as far as
    its state goes: the same parameter, buffer and submodule tables (so the same names, tensors and
    state dict); ``graph`` is the program's graph.
    """

    def __init__(self, program: nn.Module, batch_size: int):
        super().__init__()
        self._attach(program)
        self.batch_size = int(batch_size)
        self.training = program.training

    def _attach(self, program: nn.Module) -> None:
        object.__setattr__(self, "program", program)  # not a child: names stay the program's own
        for key in _SHARED:
            self.__dict__[key] = program.__dict__[key]

    @property
    def graph(self):
        return self.program.graph

    def train(self, mode: bool = True):
        self.program.train(mode)  # the program refuses train()/eval() where torch.export makes it do so
        return super().train(mode)

    def __deepcopy__(self, memo):
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        program = copy.deepcopy(self.program, memo)
        for key, value in self.__dict__.items():
            if key not in _SHARED and key != "program":
                new.__dict__[key] = copy.deepcopy(value, memo)
        new._attach(program)
        return new

    def forward(self, *args, **kwargs):
        b = self.batch_size
        if _symbolic_tracing():  # torch.fx (certify): the batch is a Proxy, there is nothing to cut
            raise TypeError(f"a torch.export program with a fixed batch of {b}; export it with a dynamic batch "
                            f"to trace it")
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or first is None or first.ndim == 0 \
                or first.shape[0] == b:  # traced for an export (the tracer's sample), or one chunk's worth
            return self.program(*args, **kwargs)
        n = first.shape[0]
        leaves, spec = tree_flatten((args, kwargs))
        batched = [isinstance(a, torch.Tensor) and a.ndim >= 1 and a.shape[0] == n for a in leaves]
        outs, keeps = [], []
        for start in range(0, max(n, 1), b):
            chunk = [_padded(a[start:start + b], b) if t else a for a, t in zip(leaves, batched)]
            a, k = tree_unflatten(chunk, spec)
            outs.append(tree_flatten(self.program(*a, **k)))
            keeps.append(min(b, n - start))
        out_spec = outs[0][1]
        joined = []
        for parts in zip(*(o[0] for o in outs)):
            if all(isinstance(p, torch.Tensor) and p.ndim >= 1 and p.shape[0] == b for p in parts):
                joined.append(torch.cat([p[:keep] for p, keep in zip(parts, keeps)]))
            else:  # not batched (e.g. a scalar): the first chunk's
                joined.append(parts[0])
        return tree_unflatten(joined, out_spec)

    def extra_repr(self) -> str:
        return f"batch_size={self.batch_size}"


def load_pt2(path: str | Path):
    """The ``nn.Module`` of a checked ``.pt2`` archive (``ExportedProgram.module()``; for a program
    exported with a fixed batch size, a :class:`FixedBatchModule` around it that runs any batch size);
    a one-line :class:`ModelError` for a file that is unsafe or unreadable."""
    import torch

    path = Path(path)
    check_archive(path)
    with _torch_log_captured() as cap, _weights_only():
        try:
            ep = torch.export.load(str(path))
            module = ep.module()
            batch = static_batch(ep)
        except Exception as e:  # torch.export raises many types for a bad archive
            first = first_line(e)
            logged = [r.getMessage().splitlines()[0] for r in cap.records if r.levelno >= logging.WARNING]
            hint = f"{type(e).__name__}" + (f": {first}" if first else "")
            if logged and not first:
                hint += f"; torch said: {logged[-1][:120]}"
            raise ModelError(f"{path}: not a readable torch.export archive ({hint})") from None
    return module if batch is None else FixedBatchModule(module, batch)
