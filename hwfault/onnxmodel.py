"""The deployed ONNX file as a second place to run faults: its weights, perturbed in place, run in onnxruntime.

:func:`load_onnx` returns an :class:`OnnxModule`, a ``torch.nn.Module`` whose parameters are the
file's injectable initializers, so the torch fault machinery (selection, ``Chip``, ``perturbed``,
``evaluate``, campaigns, Monte-Carlo estimates) runs on it unchanged:

- float32 files: the weights and biases of ``Conv``, ``Gemm`` and ``MatMul`` nodes (a ``MatMul``
  bias is the initializer of the ``Add`` that follows it) and the scale and bias of normalisation
  nodes. Weights are shown in torch's layout (out, in): a ``MatMul`` or ``Gemm`` (``transB = 0``)
  weight is the transpose of its initializer.
- QCDQ files (integer initializer -> [Clip] -> ``DequantizeLinear`` -> Conv/Gemm/MatMul, as
  :func:`hwfault.export.export_onnx` writes them): the integer codes q, shown *dequantised*,
  (q - zero_point) * scale in float32. Every forward pass re-encodes the current values to codes,
  ``clip(round(p / scale) + zero_point)``, in the initializer's integer type, so the file's grid
  is what runs. Exposing and re-encoding gives back the stored codes exactly (|q| <= 2**15, the
  relative float32 error of q * scale / scale is below 2**-22). When the largest |q| of each scale
  group is 2**(N-1) - 1 (brevitas's narrow-range max scaling, so every file hwfault writes),
  hwfault's ``intN`` format at the same granularity finds the same scale up to float round-off,
  hence the same codes, and its bit flips land on the stored bits. If the scale differs (a chip of
  another width or granularity than the file), the chip's value is rounded to the file's grid
  by the re-encoding: the run shows what the deployed file can represent. A ``Clip`` between the
  codes and ``DequantizeLinear`` (narrow range, or N < 8 bits in int8 containers) is bypassed, so a
  flip to the code -2**(N-1), which an N-bit two's complement cell can hold, reads as itself.

Parameters are grouped in child modules named after the ONNX nodes (``/conv1/Conv`` ->
``conv1.weight``; initializers already named like ``fc1.bias`` keep their names), of placeholder
classes that subclass ``nn.Conv2d``'s base, ``nn.Linear`` and ``nn.BatchNorm``'s base so that
:func:`hwfault.params.describe` types them ``conv``, ``linear`` and ``norm``. The forward pass runs one
onnxruntime session built once, in which those initializers became graph inputs; each call feeds
the current parameter values (numpy views, no copies for float32 tensors in their stored layout).

One output is scored. ``output`` (a name, or an index into the graph's outputs) picks it; by
default it is the only output, else the only floating-point output, else the only floating-point
output of rank 2, (batch, classes); anything else asks for ``output``. The graph is first cut to what
that output depends on (:func:`hwfault.onnxbind.prune`): nodes elsewhere, such as the label branch
of a scikit-learn model converted by skl2onnx (``ArgMax`` -> ``ai.onnx.ml::ArrayFeatureExtractor``),
are neither checked nor run, and initializers that do not feed the output are not parameters. When
the output is a ``Softmax`` over its last axis (through Identity nodes), the forward pass returns the
Softmax's *input*, the logits: top-1 predictions are those of the probabilities (up to ties in
float32), and cross-entropy is then the model's own negative log-likelihood. Any other
probability output (a Sigmoid, a normaliser) is scored as it is: accuracy is right, but
cross-entropy on probabilities is not the model's NLL. A ZipMap output (skl2onnx's default, a
sequence of dicts) is refused with the hint to convert with ``options={'zipmap': False}``.

Gradients do not flow through onnxruntime: :attr:`OnnxModule.differentiable` is False and a
backward pass raises :class:`~hwfault.errors.ModelError` (worst-case analyses need the torch model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import DataError, ModelError, first_line as _first_line
from .onnxbind import OnnxBinding, _clean, _find_bindings, choose_output, prune, scores_of
from .onnxio import check_external_data, metadata_of, ort_session

__all__ = ["load_onnx", "OnnxModule", "OnnxBinding", "SUPPORTED_OPS"]

#: Standard ONNX ops an injectable file may contain. Left out on purpose: ops whose weights hwfault
#: cannot expose in a known layout (LSTM, GRU, RNN, ConvTranspose, Einsum, QLinearConv, QGemm,
#: ConvInteger, MatMulInteger, ...) and control flow (If, Loop, Scan: subgraphs hide initializers).
SUPPORTED_OPS = frozenset("""
    Abs Acos Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization Cast CastLike Ceil Celu Clip
    Concat Constant ConstantOfShape Conv Cos DepthToSpace DequantizeLinear Div Dropout Elu Equal Erf Exp
    Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater
    GreaterOrEqual HardSigmoid HardSwish Identity InstanceNormalization IsInf IsNaN LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization LRN MatMul Max MaxPool Mean Min Mish Mod
    Mul Neg Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL1 ReduceL2 ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round Selu
    Shape Sigmoid Sign Sin Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum
    Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split())

_NO_GRAD = ("ONNX model: gradient-based worst case needs the torch model; Monte-Carlo only "
            "(onnxruntime computes no gradients)")


class _OnnxLayer:
    """Mixin of the placeholder modules: they own parameters, their ONNX node runs them."""

    def _setup(self, node: str) -> None:
        nn.Module.__init__(self)
        self.onnx_node = node

    def forward(self, *args, **kwargs):
        raise ModelError(f"'{self.onnx_node}' is part of an ONNX model: call the OnnxModule, not its layers")

    def extra_repr(self) -> str:
        return f"onnx node '{self.onnx_node}'"


class OnnxConv(_OnnxLayer, nn.modules.conv._ConvNd):
    """The parameters of an ONNX ``Conv`` node (typed ``conv``)."""

    def __init__(self, node: str):
        self._setup(node)


class OnnxLinear(_OnnxLayer, nn.Linear):
    """The parameters of an ONNX ``Gemm`` / ``MatMul`` node (typed ``linear``)."""

    def __init__(self, node: str):
        self._setup(node)


class OnnxNorm(_OnnxLayer, nn.modules.batchnorm._NormBase):
    """The scale and bias of an ONNX normalisation node (typed ``norm``)."""

    def __init__(self, node: str):
        self._setup(node)
        self.track_running_stats = False

    def _load_from_state_dict(self, *args, **kwargs):
        nn.Module._load_from_state_dict(self, *args, **kwargs)


_LAYER = {"conv": OnnxConv, "linear": OnnxLinear, "norm": OnnxNorm}


class _OrtForward(torch.autograd.Function):
    """The onnxruntime run as an autograd node, so that a backward pass fails with a clear message."""

    @staticmethod
    def forward(ctx, module, x, *params):
        ctx.path = module.path
        return module._run(x)

    @staticmethod
    def backward(ctx, *grads):
        raise ModelError(f"{ctx.path}: {_NO_GRAD}")


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime, with its injectable initializers as ``nn.Parameter`` s.

    Attributes: ``path``; ``input_name`` and ``input_shape`` (None for a symbolic dimension);
    ``output_name`` (the graph output chosen, see :func:`load_onnx`), ``output_names`` (all of the
    file's outputs) and ``scores_name`` (the tensor the forward pass returns: ``output_name``, or the
    input of the Softmax that produces it); ``metadata`` (the file's hwfault metadata, see :func:`hwfault.export.read_metadata`);
    ``bindings`` (one :class:`OnnxBinding` per parameter); ``differentiable`` (False).
    """

    differentiable = False

    def __init__(self, proto, *, path: str | Path = "<memory>", threads: int | None = None, output=None):
        super().__init__()
        import onnx

        self.path = Path(path)
        self.threads = threads
        self.output_names = tuple(o.name for o in proto.graph.output)
        chosen = proto.graph.output[choose_output(proto.graph, output, self.path)]
        self.output_name = chosen.name
        self.scores_name = scores_of(proto, chosen.name)
        scores_vi = onnx.ValueInfoProto()
        scores_vi.CopyFrom(chosen)
        scores_vi.name = self.scores_name
        proto = prune(proto, scores_vi, self.path)  # operators the scored output does not depend on are left alone
        graph = proto.graph
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise ModelError(f"{self.path}: unsupported op '{node.domain}::{node.op_type}' (node '{node.name}') "
                                 f"on the path to output '{self.output_name}': custom domains cannot be injected; "
                                 f"export with standard ONNX ops")
            if node.op_type not in SUPPORTED_OPS:
                raise ModelError(f"{self.path}: unsupported ONNX op '{node.op_type}' (node '{node.name}'): fault "
                                 f"injection supports Conv/Gemm/MatMul/normalisation weights in feed-forward "
                                 f"graphs of standard ops")
        inits = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: expected a model with one input, got {len(inputs)}")
        tt = inputs[0].type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise ModelError(f"{self.path}: expected a float32 input, got "
                             f"{onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        self._input_dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                 for d in tt.shape.dim)
        self.metadata = metadata_of(proto)

        bindings = _find_bindings(graph, self.path)
        self.bindings = tuple(bindings)
        for b in bindings:
            b.param = nn.Parameter(torch.from_numpy(b.values()), requires_grad=False)
            self._attach(b)
        self._graph_bytes = self._injectable_graph(proto, bindings)
        self._session = None
        self._session_or_error()  # fail at load, not at the first trial

    # -- construction

    def _attach(self, b: OnnxBinding) -> None:
        """Register ``b.param`` under its dotted name, creating containers and the typed leaf module;
        a name already taken gets a numeric suffix (``b.name`` is updated)."""
        *path, attr = b.name.split(".")
        if not path:
            path = [_clean(b.node)]
        leaf_type = _LAYER[b.component]
        parent: nn.Module = self
        final = []
        for i, part in enumerate(path):
            last = i == len(path) - 1
            child = parent._modules.get(part)
            fits = child is not None and (not last or (isinstance(child, leaf_type) and not hasattr(child, attr)))
            if not fits:
                if child is not None or hasattr(parent, part):
                    part = self._free_name(parent, part)
                child = leaf_type(b.node) if last else nn.Module()
                parent.add_module(part, child)
            final.append(part)
            parent = child
        if hasattr(parent, attr):  # e.g. a tensor named like a module attribute
            attr = self._free_name(parent, attr)
        parent.register_parameter(attr, b.param)
        b.name = ".".join(final + [attr])

    @staticmethod
    def _free_name(parent: nn.Module, base: str) -> str:
        i, name = 1, base
        while name in parent._modules or hasattr(parent, name):
            name = f"{base}_{i}"
            i += 1
        return name

    @staticmethod
    def _injectable_graph(proto, bindings: list[OnnxBinding]) -> bytes:
        """The model with the bound initializers turned into graph inputs and QCDQ Clips bypassed."""
        import onnx

        m = onnx.ModelProto()
        m.CopyFrom(proto)
        bound = {b.tensor: b for b in bindings}
        keep = [t for t in m.graph.initializer if t.name not in bound]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)
        listed = {i.name for i in m.graph.input}
        for b in bindings:
            if b.tensor not in listed:
                m.graph.input.append(onnx.helper.make_tensor_value_info(
                    b.tensor, onnx.helper.np_dtype_to_tensor_dtype(b.stored.dtype), list(b.stored.shape)))
        for b in bindings:  # DequantizeLinear reads the codes directly (past Clip and Identity nodes)
            for i in b.dq_nodes:
                m.graph.node[i].input[0] = b.tensor
        used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
        dead = True
        while dead:  # drop the Clips (and Identities) nobody reads any more
            dead = [n for n in m.graph.node if n.op_type in ("Clip", "Identity") and not (set(n.output) & used)]
            for n in dead:
                m.graph.node.remove(n)
            used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
        return m.SerializeToString()

    def _session_or_error(self):
        if self._session is None:
            threads = self.threads if self.threads is not None else torch.get_num_threads()
            try:
                self._session = ort_session(self._graph_bytes, threads=threads,
                                            providers=getattr(self, "providers", None))
            except Exception as e:  # onnxruntime's exception types
                raise ModelError(f"{self.path}: onnxruntime cannot load the model ({_first_line(e)})") from None
        return self._session

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_session"] = None  # rebuilt on first use after copying or unpickling
        return state

    def use_device(self, device, *, strict: bool = True) -> None:
        """Run on ``device`` (a ``torch.device``): the CPU provider, or for ``cuda`` onnxruntime's
        CUDAExecutionProvider (weights and inputs are still fed from the CPU). Without that provider,
        or for ``mps``, a one-line error (``strict=False``, as for ``--device auto``: stay on the CPU)."""
        import onnxruntime as ort

        providers = None
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        elif device.type != "cpu" and strict:
            why = ("its CUDAExecutionProvider is not installed (pip install onnxruntime-gpu)"
                   if device.type == "cuda" else f"it has no {device.type} provider")
            raise ModelError(f"--device {device}: {self.path} runs in onnxruntime, and {why}; use --device cpu")
        if providers != getattr(self, "providers", None):
            self.providers = providers
            self._session = None
            self._session_or_error()

    # -- running

    def _shape_text(self) -> str:
        return "(" + ", ".join(str(d) for d in self._input_dims) + ")"

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`~hwfault.errors.DataError` unless ``x`` fits the declared input shape."""
        shape = tuple(x.shape)
        if len(shape) != len(self.input_shape) or any(
                d is not None and d != s for d, s in zip(self.input_shape, shape, strict=True)):
            raise DataError(f"{self.path}: the ONNX model expects inputs of shape {self._shape_text()}, "
                            f"got data of shape {shape}")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        arr = x.detach().cpu()
        arr = (arr if arr.dtype == torch.float32 else arr.float()).contiguous().numpy()
        feeds = {self.input_name: arr}
        for b in self.bindings:
            feeds[b.tensor] = b.feed()
        try:
            out = self._session_or_error().run([self.scores_name], feeds)[0]
        except Exception as e:  # onnxruntime's own exception types (InvalidArgument, Fail, ...)
            raise DataError(f"{self.path}: onnxruntime cannot run the model on data of shape {tuple(x.shape)}: "
                            f"{_first_line(e)}") from None
        out = torch.from_numpy(np.asarray(out, dtype=np.float32))
        return out if not x.is_floating_point() or x.dtype == torch.float32 else out.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            raise TypeError("an OnnxModule runs in onnxruntime and cannot be traced by torch.fx")
        params = [b.param for b in self.bindings]
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _OrtForward.apply(self, x, *params)
        return self._run(x)

    # -- inspection

    def binding(self, name: str) -> OnnxBinding:
        for b in self.bindings:
            if b.name == name:
                return b
        from .errors import did_you_mean

        hint = did_you_mean(name, [b.name for b in self.bindings])
        raise ModelError(f"no injectable tensor '{name}' in {self.path}{hint}")

    def stored_codes(self, name: str) -> np.ndarray:
        """The tensor as stored in the file (integer codes for QCDQ weights), stored layout."""
        return self.binding(name).stored

    def codes(self, name: str) -> np.ndarray:
        """The integer codes the parameter's current values feed to the session (QCDQ tensors only)."""
        b = self.binding(name)
        if not b.quantized:
            raise ModelError(f"'{name}' is stored as float32 in {self.path}, not as integer codes")
        return b.codes()

    @property
    def quantized(self) -> bool:
        """Whether the file stores integer (QCDQ) weights."""
        return any(b.quantized for b in self.bindings)

    def describe(self) -> list[dict]:
        """One record per injectable tensor (name, ONNX tensor and node, storage, scale granularity)."""
        return [b.describe() for b in self.bindings]

    def extra_repr(self) -> str:
        via = "" if self.scores_name == self.output_name else f" (its Softmax's input '{self.scores_name}')"
        return (f"path='{self.path}', input {self._shape_text()}, output '{self.output_name}'{via}, "
                f"{len(self.bindings)} injectable tensors")


def load_onnx(path: str | Path, output: str | int | None = None, *, threads: int | None = None) -> OnnxModule:
    """Load an ONNX file as an :class:`OnnxModule` (eval mode, parameters without gradients).

    ``output``: the graph output to score, by name or index (an int, or a string of digits; a name
    wins over an index if an output is named like one). None: the only output; of several, the only
    floating-point one, else the only floating-point one of shape (batch, classes); otherwise a
    ModelError that lists the outputs. Only the part of the graph that output depends on is checked,
    run and injected. A Softmax output is returned as the Softmax's input (logits; see the module's
    docstring). ``threads``: onnxruntime intra-op threads (default ``torch.get_num_threads()``). Raises
    :class:`~hwfault.errors.ModelError` for a missing, unreadable, invalid or non-injectable file.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    check_external_data(path)
    try:
        proto = onnx.load(str(path))
    except OSError as e:
        raise ModelError(f"{path}: cannot read the ONNX file ({type(e).__name__}: {_first_line(e)})") from None
    except Exception as e:  # protobuf's DecodeError and friends for bytes that are not a ModelProto
        raise ModelError(f"{path}: not an ONNX model ({type(e).__name__}: {_first_line(e)})") from None
    if proto.ir_version <= 0 or not proto.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # onnx.checker.ValidationError
        raise ModelError(f"{path}: not a valid ONNX model ({_first_line(e)})") from None
    return OnnxModule(proto, path=path, threads=threads, output=output).eval()
