"""Bad input files for the fuzz suite: data (.npz), models (.pt2, .safetensors, .onnx, pickles).

Each builder writes one file (or folder) into a case's directory and returns its name. Builders of
files that carry a code-execution payload take the path of a marker file that the payload would
create; the suite asserts that the marker never appears.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np

N = 24  # samples in the small data files


class Payload:
    """An object whose unpickling runs ``touch <marker>``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _digits_like(n: int = N, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


# ----------------------------------------------------------------------------- data files

def _npz(d: Path, name: str, **arrays) -> str:
    np.savez(d / name, **arrays)
    return name


def _npy_bytes(header_shape, dtype="<f4", data: bytes = b"") -> bytes:
    """A .npy member whose header claims ``header_shape`` but holds ``data``."""
    hdr = {"descr": dtype, "fortran_order": False, "shape": tuple(header_shape)}
    text = repr(hdr).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def _zip(d: Path, name: str, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(d / name, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return name


def data_builders(marker: str) -> dict:
    """name -> builder(dir) -> file name, for every bad data file."""
    x, y = _digits_like()

    def npy(arr, pickle: bool = False) -> bytes:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=pickle)
        return buf.getvalue()

    payload = np.array([Payload(marker)] * N, dtype=object)  # unpickling it would run the payload

    def members(name, x_bytes, y_bytes):
        return lambda d: _zip(d, name, {"x.npy": x_bytes, "y.npy": y_bytes})

    pickled = members("pickled.npz", npy(x), npy(payload, pickle=True))
    pickled_x = members("pickled_x.npz", npy(payload, pickle=True), npy(y))
    huge_header = members("huge.npz", _npy_bytes((10**12, 64), data=b"\0" * 256), npy(y))
    short_data = members("short.npz", _npy_bytes((N, 1, 8, 8), data=b"\0" * 100), npy(y))
    bad_magic = members("magic.npz", b"NOTNUMPY" + b"\0" * 200, npy(y))

    def truncated(d):
        _npz(d, "full.npz", x=x, y=y)
        raw = (d / "full.npz").read_bytes()
        (d / "full.npz").unlink()
        (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
        return "truncated.npz"

    def text(d):
        (d / "text.npz").write_text("x,y\n1,2\n")
        return "text.npz"

    def empty(d):
        (d / "empty.npz").write_bytes(b"")
        return "empty.npz"

    def directory(d):
        (d / "dir.npz").mkdir()
        return "dir.npz"

    def other_members(d):
        return _zip(d, "other.npz", {"readme.txt": b"hello"})

    return {
        "not-a-zip": text, "empty-file": empty, "truncated-zip": truncated, "directory": directory,
        "no-npy-members": other_members, "missing": lambda d: "missing.npz",
        "no-y": lambda d: _npz(d, "noy.npz", x=x),
        "no-x": lambda d: _npz(d, "nox.npz", y=y),
        "object-y-payload": pickled, "object-x-payload": pickled_x,
        "x-1d": lambda d: _npz(d, "x1d.npz", x=np.zeros(N, np.float32), y=y),
        "x-complex": lambda d: _npz(d, "xc.npz", x=x.astype(np.complex64), y=y),
        "x-strings": lambda d: _npz(d, "xs.npz", x=np.array([["a"] * 64] * N), y=y),
        "x-nan": lambda d: _npz(d, "xnan.npz", x=np.where(x > 0.5, np.nan, x).astype(np.float32), y=y),
        "x-inf": lambda d: _npz(d, "xinf.npz", x=np.where(x > 0.5, np.inf, x).astype(np.float32), y=y),
        "x-beyond-float32": lambda d: _npz(d, "xbig.npz", x=x.astype(np.float64) * 1e300, y=y),
        "y-2d": lambda d: _npz(d, "y2d.npz", x=x, y=np.zeros((N, 2), np.int64)),
        "y-fractional": lambda d: _npz(d, "yfrac.npz", x=x, y=y + 0.5),
        "y-nan": lambda d: _npz(d, "ynan.npz", x=x, y=np.full(N, np.nan)),
        "y-negative": lambda d: _npz(d, "yneg.npz", x=x, y=-y - 1),
        "y-bool": lambda d: _npz(d, "ybool.npz", x=x, y=y > 4),
        "y-strings": lambda d: _npz(d, "ystr.npz", x=x, y=np.array(["cat"] * N)),
        "y-uint64-huge": lambda d: _npz(d, "yu64.npz", x=x, y=np.full(N, 2**64 - 1, np.uint64)),
        "labels-beyond-classes": lambda d: _npz(d, "y11.npz", x=x, y=np.where(y > 5, 11, y)),
        "length-mismatch": lambda d: _npz(d, "mismatch.npz", x=x, y=y[:-3]),
        "zero-samples": lambda d: _npz(d, "zero.npz", x=x[:0], y=y[:0]),
        "wrong-shape": lambda d: _npz(d, "shape.npz", x=np.zeros((N, 1, 40), np.float32), y=y),
        "wrong-rank": lambda d: _npz(d, "rank.npz", x=np.zeros((N, 3, 8, 8, 2), np.float32), y=y),
        "header-claims-1e12-rows": huge_header, "header-claims-more-than-stored": short_data,
        "bad-npy-magic": bad_magic,
        "x-object-mixed": lambda d: _zip(d, "mixed.npz", {"x.npy": _npy_bytes((N,), dtype="|O"), "y.npy": b""}),
        "y-empty-member": lambda d: _zip(d, "yempty.npz", {"x.npy": _npy_bytes((N, 1, 8, 8), data=x.tobytes()),
                                                              "y.npy": b""}),
    }


# ----------------------------------------------------------------------------- models

def raw(name: str, data: bytes):
    """A builder that writes ``data`` as file ``name``."""
    def build(d: Path) -> str:
        (d / name).write_bytes(data)
        return name
    return build


_CACHE: dict[str, Path] = {}


def _base_pt2(cache: Path, dynamic: bool = True) -> Path:
    """A good torch.export archive of the zoo digits-mlp (built once per process)."""
    key = f"base-{dynamic}"
    if key in _CACHE:
        return _CACHE[key]
    import torch

    import hwfault as hw

    model = hw.load_model("digits-mlp")
    x = hw.load_data("digits").tensors[0][:4]
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    ep = torch.export.export(model, (x,), dynamic_shapes=shapes)
    path = cache / f"base-{'dyn' if dynamic else 'fixed'}.pt2"
    torch.export.save(ep, str(path))
    _CACHE[key] = path
    return path


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i.filename) for i in z.infolist()}


def _root(files: dict[str, bytes]) -> str:
    return next(iter(files)).split("/", 1)[0] + "/"


def _write_zip(path: Path, files: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compress) as z:
        for k, v in files.items():
            z.writestr(k, v)


def _torch_save(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def pt2_builders(marker: str, cache: Path) -> dict:
    """name -> builder(dir) -> file name, for every bad (and one good) .pt2 archive."""

    def mutate(name: str, edit, dynamic: bool = True, compress: int = zipfile.ZIP_STORED):
        def build(d: Path) -> str:
            files = _members(_base_pt2(cache, dynamic))
            r = _root(files)
            edit(files, r)
            _write_zip(d / name, files, compress)
            return name
        return build

    def weights_cfg(files, r):
        return json.loads(files[r + "data/weights/model_weights_config.json"])

    def pickled_weight(files, r):
        cfg = weights_cfg(files, r)
        fqn = next(iter(cfg["config"]))
        cfg["config"][fqn]["use_pickle"] = True
        files[r + "data/weights/model_weights_config.json"] = json.dumps(cfg).encode()
        files[r + "data/weights/" + cfg["config"][fqn]["path_name"]] = _torch_save(Payload(marker))

    def pickled_legit(files, r):  # use_pickle with a real tensor: the restricted unpickler takes it
        import torch

        cfg = weights_cfg(files, r)
        fqn = next(iter(cfg["config"]))
        meta = cfg["config"][fqn]
        shape = [s["as_int"] for s in meta["tensor_meta"]["sizes"]]
        raw = files[r + "data/weights/" + meta["path_name"]]
        t = torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape).clone()
        meta["use_pickle"] = True
        files[r + "data/weights/model_weights_config.json"] = json.dumps(cfg).encode()
        files[r + "data/weights/" + meta["path_name"]] = _torch_save(torch.nn.Parameter(t))

    def pickled_constant(files, r):
        cfg = {"config": {"evil": {"path_name": "tensor_0", "is_param": False, "use_pickle": True,
                                   "tensor_meta": None}}}
        files[r + "data/constants/model_constants_config.json"] = json.dumps(cfg).encode()
        files[r + "data/constants/tensor_0"] = _torch_save(Payload(marker))

    def obj_constant(prefix):
        def edit(files, r):
            cfg = {"config": {"evil": {"path_name": f"{prefix}0", "is_param": False, "use_pickle": False,
                                       "tensor_meta": None}}}
            files[r + "data/constants/model_constants_config.json"] = json.dumps(cfg).encode()
            import pickle

            files[r + f"data/constants/{prefix}0"] = pickle.dumps(Payload(marker))
        return edit

    def sample_inputs(files, r):
        files[r + "data/sample_inputs/model.pt"] = _torch_save(Payload(marker))

    def legacy_weights(files, r):
        files[r + "data/weights/model.pt"] = _torch_save({"w": Payload(marker)})

    def program(edit_json):
        def edit(files, r):
            d = json.loads(files[r + "models/model.json"])
            edit_json(d)
            files[r + "models/model.json"] = json.dumps(d).encode()
        return edit

    def set_all(d, key, value):
        if isinstance(d, dict):
            for k in list(d):
                if k == key:
                    d[k] = value
                else:
                    set_all(d[k], key, value)
        elif isinstance(d, list):
            for v in d:
                set_all(v, key, value)

    def first_node(d):
        return d["graph_module"]["graph"]["nodes"][0]

    def extra_entry(path, data=b"\x7fELF"):
        def edit(files, r):
            files[r + path] = data
        return edit

    def old_format(d: Path) -> str:
        files = {"version": b"8.0.0", "serialized_exported_program.json": b"{}",
                 "serialized_state_dict.json": _torch_save(Payload(marker)),
                 "serialized_constants.json": b"", "serialized_example_inputs.json": b""}
        _write_zip(d / "old.pt2", files)
        return "old.pt2"

    def traversal(files, r):
        files[r + "../escape.txt"] = b"x"

    def bomb(files, r):
        files[r + "extra/bomb"] = b"\0" * (96 * 2**20)

    def no_format(files, r):
        del files[r + "archive_format"]

    def garbage_json(files, r):
        files[r + "models/model.json"] = b"{not json"

    def missing_weight(files, r):
        cfg = weights_cfg(files, r)
        del files[r + "data/weights/" + next(iter(cfg["config"].values()))["path_name"]]

    def nan_weight(files, r):
        cfg = weights_cfg(files, r)
        meta = next(iter(cfg["config"].values()))
        raw = bytearray(files[r + "data/weights/" + meta["path_name"]])
        raw[0:4] = struct.pack("<f", float("nan"))
        files[r + "data/weights/" + meta["path_name"]] = bytes(raw)

    def truncated(d: Path) -> str:
        raw = _base_pt2(cache).read_bytes()
        (d / "trunc.pt2").write_bytes(raw[: len(raw) // 3])
        return "trunc.pt2"

    def copy_good(name, dynamic=True):
        def build(d: Path) -> str:
            shutil.copy(_base_pt2(cache, dynamic), d / name)
            return name
        return build

    names_inj = "linear\\n    __import__('os').system('touch " + marker + "')\\n    "
    return {
        "pt2-pickled-weight-payload": mutate("pw.pt2", pickled_weight),
        "pt2-pickled-constant-payload": mutate("pc.pt2", pickled_constant),
        "pt2-opaque-object-constant": mutate("po.pt2", obj_constant("opaque_obj_")),
        "pt2-torchbind-object-constant": mutate("pt.pt2", obj_constant("custom_obj_")),
        "pt2-sample-inputs-payload": mutate("ps.pt2", sample_inputs),
        "pt2-legacy-weights-payload": mutate("pl.pt2", legacy_weights),
        "pt2-sympy-payload": mutate("sy.pt2", program(lambda d: set_all(
            d, "expr_str", "__import__('os').system('touch " + marker + "')"))),
        "pt2-sympy-attribute-access": mutate("sa.pt2", program(lambda d: set_all(
            d, "expr_str", "Symbol('s0').__class__"))),
        "pt2-target-torch-save": mutate("ts.pt2", program(lambda d: first_node(d).update(target="torch.save"))),
        "pt2-target-builtins": mutate("tb.pt2", program(lambda d: first_node(d).update(target="builtins.exec"))),
        "pt2-target-cpp-extension": mutate("tc.pt2", program(lambda d: first_node(d).update(
            target="torch.utils.cpp_extension.load_inline"))),
        "pt2-node-name-injection": mutate("ni.pt2", program(lambda d: set_all(d, "name", names_inj))),
        "pt2-aotinductor-code": mutate("ao.pt2", extra_entry("data/aotinductor/model/model.so")),
        "pt2-executorch-program": mutate("et.pt2", extra_entry("data/executorch/model.pte")),
        "pt2-unexpected-entry": mutate("ue.pt2", extra_entry("code/evil.py", b"import os")),
        "pt2-path-traversal-entry": mutate("tr.pt2", traversal),
        "pt2-zip-bomb": mutate("zb.pt2", bomb, compress=zipfile.ZIP_DEFLATED),
        "pt2-old-format-payload": old_format,
        "pt2-no-archive-format": mutate("nf.pt2", no_format),
        "pt2-program-not-json": mutate("gj.pt2", garbage_json),
        "pt2-weight-entry-missing": mutate("mw.pt2", missing_weight),
        "pt2-nan-weight": mutate("nw.pt2", nan_weight),
        "pt2-truncated": truncated,
        "pt2-not-a-zip": raw("nz.pt2", b"this is not an archive"),
        "pt2-empty": raw("em.pt2", b""),
        "pt2-batch-baked-in": copy_good("fixed.pt2", dynamic=False),
        "pt2-pickled-legit-tensor": mutate("ok.pt2", pickled_legit),  # loads: expected to succeed
    }


def _header(meta: dict) -> dict:
    return {"format": "hwfault-checkpoint/1", "arch": "digits-mlp", "meta": json.dumps(meta)}


def safetensors_builders() -> dict:
    import torch
    from safetensors.torch import save_file

    import hwfault as hw

    def state():
        return {k: v.clone() for k, v in hw.load_model("digits-mlp").state_dict().items()}

    def save(name, st, header=None):
        def build(d: Path) -> str:
            save_file(st() if callable(st) else st, str(d / name), metadata=_header({}) if header is None else header)
            return name
        return build

    def edit(fn):
        def make():
            s = state()
            fn(s)
            return s
        return make

    def truncated(d: Path) -> str:
        save_file(state(), str(d / "full.safetensors"), metadata=_header({}))
        b = (d / "full.safetensors").read_bytes()
        (d / "full.safetensors").unlink()
        (d / "tr.safetensors").write_bytes(b[: len(b) // 2])
        return "tr.safetensors"

    return {
        "st-garbage": raw("g.safetensors", b"garbage bytes, not a checkpoint"),
        "st-empty": raw("e.safetensors", b""),
        "st-header-length-2^60": raw("h.safetensors", struct.pack("<Q", 2**60) + b"{}"),
        "st-header-not-json": raw("j.safetensors", struct.pack("<Q", 8) + b"{notjson"),
        "st-truncated": truncated,
        "st-foreign-no-header": save("f.safetensors", lambda: {"w": torch.zeros(3)}, header={}),
        "st-unknown-arch": save("u.safetensors", state, header={**_header({}), "arch": "resnet9000"}),
        "st-meta-not-json": save("m.safetensors", state, header={**_header({}), "meta": "{oops"}),
        "st-int64-tensors": save("i.safetensors", edit(lambda s: s.update({k: v.round().long() for k, v in s.items()}))),
        "st-nan-weights": save("n.safetensors", edit(lambda s: s["fc1.weight"].__setitem__((0, 0), float("nan")))),
        "st-inf-weights": save("inf.safetensors", edit(lambda s: s["fc2.bias"].__setitem__(0, float("inf")))),
        "st-missing-tensor": save("mk.safetensors", edit(lambda s: s.pop("fc3.bias"))),
        "st-extra-tensor": save("ek.safetensors", edit(lambda s: s.update(extra=torch.zeros(2)))),
        "st-wrong-shape": save("ws.safetensors", edit(lambda s: s.update({"fc1.weight": torch.zeros(3, 3)}))),
    }


def onnx_builders(cache: Path) -> dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def graph_model(nodes, inits, out_type=TensorProto.FLOAT, out_shape=(None, 10)):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", out_type, list(out_shape))], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    def mlp_nodes(out="y"):
        w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32), "W")
        shape = numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], [out])]
        return nodes, [w, shape]

    def save(name, model):
        def build(d: Path) -> str:
            onnx.save(model(), str(d / name))
            return name
        return build

    def argmax():
        nodes, inits = mlp_nodes("logits")
        nodes.append(helper.make_node("ArgMax", ["logits"], ["y"], axis=1, keepdims=1))
        return graph_model(nodes, inits, TensorProto.INT64, (None, 1))

    def external(location):
        def build(d: Path) -> str:
            (d / "sub").mkdir()
            (d / "secret.bin").write_bytes(b"S" * 4096)
            nodes, inits = mlp_nodes()
            w = inits[0]
            w.data_location = TensorProto.EXTERNAL
            w.ClearField("raw_data")
            w.ClearField("float_data")
            for k, v in (("location", location.format(dir=d)), ("offset", "0"), ("length", "2560")):
                e = w.external_data.add()
                e.key, e.value = k, v
            if location == "link.bin":
                os.symlink(d / "secret.bin", d / "sub" / "link.bin")
            onnx.save(graph_model(nodes, inits), str(d / "sub" / "m.onnx"))
            return "sub/m.onnx"
        return build

    return {
        "onnx-garbage": raw("g.onnx", b"\x08\x07garbage protobuf \xff\xfe"),
        "onnx-empty": raw("e.onnx", b""),
        "onnx-argmax-output": save("am.onnx", argmax),
        "onnx-external-data-dotdot": external("../secret.bin"),
        "onnx-external-data-absolute": external("{dir}/secret.bin"),
        "onnx-external-data-symlink": external("link.bin"),
        "onnx-no-weights": save("nw.onnx", lambda: graph_model([helper.make_node("Identity", ["x"], ["y"])], [],
                                                                 out_shape=(None, 1, 8, 8))),
    }


def pickle_builders(marker: str) -> dict:
    """Pickled checkpoints (.pt, .pth, ...) carrying a payload: refused by suffix, never opened."""
    import pickle

    def build(name):
        def b(d: Path) -> str:
            (d / name).write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
            return name
        return b

    return {f"pickle-{s}": build(f"model.{s}") for s in ("pt", "pth", "pkl", "bin", "ckpt")}


def other_model_builders() -> dict:
    def directory(name):
        def b(d: Path) -> str:
            (d / name).mkdir()
            return name
        return b

    return {
        "model-directory-pt2": directory("m.pt2"),
        "model-directory-safetensors": directory("m.safetensors"),
        "model-missing-pt2": lambda d: "missing.pt2",
        "model-unknown-suffix": lambda d: (d / "model.h5").write_bytes(b"HDF") and "model.h5",
        "model-unknown-name": lambda d: "resnet-9000",
    }
