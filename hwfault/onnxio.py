"""ONNX files as hwfault reads and writes them: an onnxruntime session, and hwfault's metadata_props.

The deployment layer (:mod:`hwfault.export`) and the loader of ONNX models (:mod:`hwfault.onnxmodel`)
both stand on this module; neither imports the other.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from .errors import ExportError, ModelError, first_line

META_PREFIX = "hwfault_"
JSON_KEYS = META_PREFIX + "json_keys"  # which hwfault_* values are JSON (the others are plain text)


def ort_session(model, *, threads: int = 1, fuse: bool = True, providers=None):
    """An onnxruntime session (CPU unless ``providers`` says otherwise) for a path, serialized bytes or
    a ModelProto; ``threads`` intra-op threads, one inter-op thread, warnings off. ``fuse=False`` keeps
    onnxruntime to its basic graph optimisations (no QDQ fusions such as MatMulNBits, which change the
    arithmetic)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not fuse:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=list(providers or ["CPUExecutionProvider"]))


def meta_props(entries: dict) -> dict[str, str]:
    """``metadata_props`` for ``entries``: keys get the ``hwfault_`` prefix; non-string values are JSON."""
    props, json_keys = {}, []
    for k, v in entries.items():
        key = k if str(k).startswith(META_PREFIX) else META_PREFIX + str(k)
        if isinstance(v, str):
            props[key] = v
        else:
            try:
                props[key] = json.dumps(v, sort_keys=True, allow_nan=True, default=json_default)
            except (TypeError, ValueError) as e:
                raise ExportError(f"metadata '{k}': expected JSON-serialisable data, got {type(v).__name__} ({e})") \
                    from None
            json_keys.append(key)
    props[JSON_KEYS] = ",".join(sorted(json_keys))
    return props


def json_default(v):
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, (np.ndarray, torch.Tensor)):
        return v.tolist()
    if isinstance(v, (tuple, set, frozenset)):
        return list(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def set_props(proto, props: dict[str, str]) -> None:
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for k, v in keep + sorted(props.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def metadata_of(proto) -> dict:
    """The ``hwfault_*`` metadata of a loaded ModelProto, prefix stripped, JSON values decoded."""
    raw = {p.key: p.value for p in proto.metadata_props}
    json_keys = set(filter(None, raw.get(JSON_KEYS, "").split(",")))
    out = {}
    for k, v in raw.items():
        if not k.startswith(META_PREFIX) or k == JSON_KEYS:
            continue
        if k in json_keys:
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        out[k[len(META_PREFIX):]] = v
    return out


def read_metadata(path: str | Path) -> dict:
    """The hwfault metadata of an ONNX file: ``{"version": ..., "format": ..., "chip": <TOML text>,
    "robustness": {...}, ...}`` (keys without the ``hwfault_`` prefix; ``{}`` for a foreign file)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends for non-ONNX bytes
        raise ModelError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    return metadata_of(proto)


def check_external_data(path: Path) -> None:
    """External tensor data must be a regular file inside the model's folder (no absolute path, no
    '..', no symbolic link): an ONNX file cannot make hwfault read what lies elsewhere. onnx checks
    this too in recent versions; this holds whatever onnx the user has."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelError(f"{path}: not an ONNX model ({type(e).__name__}: {first_line(e)})") from None
    folder = path.resolve().parent
    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from tensors(a.g)
                for g in a.graphs:
                    yield from tensors(g)

    for t in tensors(proto.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = folder / loc
        if (not loc or Path(loc).is_absolute() or ".." in Path(loc).parts or target.is_symlink()
                or not target.resolve().is_relative_to(folder) or not target.is_file()):
            raise ModelError(f"{path}: refused: external data of tensor '{t.name}' at '{loc}' is not a regular file "
                             f"inside the model's folder")
