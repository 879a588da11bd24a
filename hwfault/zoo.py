"""The reference model zoo: a registry of small architectures, their training recipe, and checkpoints.

Names are ``DATA-ARCH``. Every zoo model is reproduced by ``hwfault zoo train NAME`` (fixed seed,
one thread, deterministic algorithms) and stored in ``models/NAME.safetensors`` with a model card
``models/NAME.md``. :func:`load_model` takes a zoo name, an hwfault checkpoint (``.safetensors``
written by hwfault, whose metadata names the architecture) or a ``torch.export`` archive (``.pt2``)
of a model whose source hwfault does not have; it always returns an eval-mode ``nn.Module``.
Each entry has a task: ``classification``, or ``lm`` for the character-level language model
``pycode-charlm`` ((B, T) token ids in, (B, T, vocab) logits out; :func:`model_task`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import platform
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cards import card
from .errors import ModelError, OutputError, did_you_mean
from .files import atomic_write, check_output, write_text
from .training import deterministic, train_epochs

CHECKPOINT_FORMAT = "hwfault-checkpoint/1"


# ----------------------------------------------------------------------------- architectures


def digits_mlp() -> nn.Module:
    """64-128-128-10 ReLU MLP on flattened 8x8 digits."""
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(64, 128), relu1=nn.ReLU(),
        fc2=nn.Linear(128, 128), relu2=nn.ReLU(), fc3=nn.Linear(128, 10),
    ))


def digits_cnn() -> nn.Module:
    """Two 3x3 conv + BatchNorm + ReLU stages, max-pool, two fully-connected layers."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 16, 3, padding=1), bn1=nn.BatchNorm2d(16), relu1=nn.ReLU(),
        conv2=nn.Conv2d(16, 32, 3, padding=1), bn2=nn.BatchNorm2d(32), relu2=nn.ReLU(),
        pool=nn.MaxPool2d(2), flatten=nn.Flatten(),
        fc1=nn.Linear(32 * 4 * 4, 64), relu3=nn.ReLU(), fc2=nn.Linear(64, 10),
    ))


class BasicBlock1d(nn.Module):
    """ResNet basic block on 1-D signals: conv-BN-ReLU-conv-BN plus (projected) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv1d(cin, cout, 1, stride=stride, bias=False), bn=nn.BatchNorm1d(cout)))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet1d(nn.Module):
    """A small residual network for MNIST-1D: stem, three basic blocks, global average pooling."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv1d(1, width, 5, padding=2, bias=False), bn=nn.BatchNorm1d(width), relu=nn.ReLU()))
        self.layer1 = BasicBlock1d(width, width)
        self.layer2 = BasicBlock1d(width, 2 * width, stride=2)
        self.layer3 = BasicBlock1d(2 * width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


class LSTMClassifier(nn.Module):
    """One-layer LSTM over the signal read in chunks of ``chunk`` samples; the last hidden state is classified."""

    def __init__(self, length: int = 40, chunk: int = 2, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.chunk = chunk
        self.lstm = nn.LSTM(chunk, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.reshape(x.shape[0], -1, self.chunk)  # (N, 1, L) -> (N, L/chunk, chunk)
        out, _ = self.lstm(seq)
        return self.fc(out[:, -1])


class TransformerClassifier(nn.Module):
    """Pre-norm Transformer encoder over patches of the signal: patch embedding (Linear), learned
    position embedding (nn.Embedding), self-attention blocks with LayerNorm, mean pooling, head."""

    def __init__(self, length: int = 40, patch: int = 4, dim: int = 64, heads: int = 4,
                 depth: int = 2, ff: int = 128, classes: int = 10):
        super().__init__()
        self.patch = patch
        self.tokens = length // patch
        self.embed = nn.Linear(patch, dim)
        self.pos = nn.Embedding(self.tokens, dim)
        self.register_buffer("positions", torch.arange(self.tokens), persistent=False)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff, dropout=0.0,
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], self.tokens, self.patch)) + self.pos(self.positions)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(dim=1))


class CausalBlock(nn.Module):
    """Pre-LayerNorm Transformer block: causal multi-head self-attention (one qkv Linear, scaled dot
    product with a causal mask, output Linear), then a GELU MLP; both residual."""

    def __init__(self, dim: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ln2, self.fc1, self.act, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, heads, t, d / heads)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return h + self.fc2(self.act(self.fc1(self.ln2(h))))


class CharTransformer(nn.Module):
    """Character-level causal language model: token and learned position embeddings, ``depth``
    pre-LN causal blocks, final LayerNorm, Linear head; (B, T) int64 ids in, (B, T, vocab) logits out."""

    def __init__(self, vocab: int | None = None, context: int | None = None, dim: int = 128, heads: int = 4,
                 depth: int = 3, ff: int = 512):
        super().__init__()
        from .text import CONTEXT, VOCAB_SIZE

        self.tok = nn.Embedding(vocab or VOCAB_SIZE, dim)
        self.pos = nn.Embedding(context or CONTEXT, dim)
        self.blocks = nn.ModuleList([CausalBlock(dim, heads, ff) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab or VOCAB_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its architecture constructor, data set and training recipe."""

    name: str
    data: str
    build: Callable[[], nn.Module]
    description: str
    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0
    kwargs: dict = field(default_factory=dict)
    task: str = "classification"  # or "lm": (B, T) token ids in, (B, T, vocab) next-token logits out


_REGISTRY: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    _REGISTRY[entry.name] = entry
    return entry


register(ZooEntry("digits-mlp", "digits", digits_mlp, "MLP 64-128-128-10, ReLU", epochs=40, lr=2e-3))
register(ZooEntry("digits-cnn", "digits", digits_cnn, "CNN: 2x(conv3x3-BN-ReLU), max-pool, FC-64, FC-10",
                  epochs=30, lr=2e-3))
register(ZooEntry("mnist1d-resnet", "mnist1d", ResNet1d, "ResNet: stem + 3 basic blocks (Conv1d-BN), avg-pool, FC",
                  epochs=40, lr=3e-3, batch_size=128))
register(ZooEntry("mnist1d-lstm", "mnist1d", LSTMClassifier, "LSTM (hidden 64) over 20 steps of 2 samples, FC",
                  epochs=60, lr=5e-3, batch_size=128))
register(ZooEntry("mnist1d-transformer", "mnist1d", TransformerClassifier,
                  "Transformer encoder: patch Linear + position Embedding, 2 pre-LN blocks (4 heads), FC",
                  epochs=60, lr=2e-3, batch_size=128))
register(ZooEntry("pycode-charlm", "pycode", CharTransformer,
                  "Character-level causal Transformer LM: token + position Embedding, 3 pre-LN blocks (dim 128, "
                  "4 heads, GELU MLP 512), LayerNorm, Linear head over 98 characters; context 64",
                  epochs=6, lr=6e-3, batch_size=64, weight_decay=0.3, task="lm"))


def list_models() -> list[str]:
    """Names of the zoo models."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> ZooEntry:
    if name not in _REGISTRY:
        raise ModelError(f"unknown zoo model '{name}'{did_you_mean(name, _REGISTRY)}")
    return _REGISTRY[name]


def models_dir() -> Path:
    """Where zoo checkpoints live: ``$HWFAULT_MODELS`` or the repository's ``models/``."""
    env = os.environ.get("HWFAULT_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nn.Module, path: str | Path, *, arch: str, meta: dict | None = None) -> Path:
    """Write ``model``'s state dict as safetensors with hwfault metadata (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    header = {"format": CHECKPOINT_FORMAT, "arch": arch, "meta": json.dumps(meta or {}, sort_keys=True)}
    def write(t: Path) -> None:
        from safetensors import SafetensorError

        try:
            save_file(state, str(t), metadata=header)
        except SafetensorError as e:  # its I/O errors (a full disk) come wrapped: unwrap them for the writer
            text = str(e)
            code = errno.ENOSPC if "No space left" in text else errno.EIO
            raise OSError(code, os.strerror(code)) from None

    atomic_write(path, write, what="checkpoint")
    return path


def checkpoint_metadata(path: str | Path) -> dict:
    """The hwfault header of a checkpoint: ``{"arch": ..., "meta": {...}}``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise ModelError(f"{path}: not a readable safetensors checkpoint ({str(e).strip()[:160]})") from None
    if header.get("format") != CHECKPOINT_FORMAT or "arch" not in header:
        raise ModelError(f"{path}: not an hwfault checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    try:
        meta = json.loads(header.get("meta", "{}"))
    except (json.JSONDecodeError, RecursionError):
        raise ModelError(f"{path}: the hwfault header's 'meta' is not JSON") from None
    return {"arch": header["arch"], "meta": meta if isinstance(meta, dict) else {}}


def load_checkpoint(path: str | Path) -> nn.Module:
    """The model of an hwfault ``.safetensors`` checkpoint (its architecture is a zoo name in its header)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    info = checkpoint_metadata(path)
    model = get_entry(info["arch"]).build()
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{path}: not a readable safetensors checkpoint ({type(e).__name__}: "
                         f"{str(e).strip()[:120]})") from None
    want = model.state_dict()
    for name, t in state.items():
        if name in want and want[name].is_floating_point() and not t.is_floating_point():
            raise ModelError(f"{path}: tensor '{name}' is {str(t.dtype).replace('torch.', '')}, but architecture "
                             f"'{info['arch']}' stores it as {str(want[name].dtype).replace('torch.', '')}")
        if name in want and tuple(t.shape) != tuple(want[name].shape):
            raise ModelError(f"{path}: tensor '{name}' has shape {tuple(t.shape)}, but architecture "
                             f"'{info['arch']}' expects {tuple(want[name].shape)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"{path}: state dict does not fit architecture '{info['arch']}': {first}") from None
    return model


def checkpoint_path(name_or_path: str | Path) -> Path | None:
    """The file behind a zoo name, a shipped checkpoint name (``models/<name>.safetensors``) or a path."""
    key = str(name_or_path)
    if key in _REGISTRY or ("/" not in key and (models_dir() / f"{key}.safetensors").is_file()):
        return models_dir() / f"{key}.safetensors"
    p = Path(key)
    return p if p.is_file() else None


def model_data(name_or_path: str | Path) -> str | None:
    """The data set a zoo model or hwfault checkpoint was trained on, if known."""
    key = str(name_or_path)
    if key in _REGISTRY:
        return _REGISTRY[key].data
    path = checkpoint_path(key)
    if path is not None and path.suffix == ".safetensors":
        key = str(path)
    if key.endswith(".safetensors") and Path(key).is_file():
        info = checkpoint_metadata(key)
        return info["meta"].get("data") or (_REGISTRY[info["arch"]].data if info["arch"] in _REGISTRY else None)
    return None


def model_task(name_or_path: str | Path) -> str:
    """The task of a zoo model or hwfault checkpoint (``classification`` or ``lm``); ``classification``
    when it is not known (e.g. a ``.pt2`` or ``.onnx`` file)."""
    key = str(name_or_path)
    if key in _REGISTRY:
        return _REGISTRY[key].task
    path = checkpoint_path(key)
    if path is not None and path.suffix == ".safetensors" and path.is_file():
        info = checkpoint_metadata(path)
        return info["meta"].get("task") or (_REGISTRY[info["arch"]].task if info["arch"] in _REGISTRY
                                            else "classification")
    return "classification"


def model_card(name: str) -> dict:
    """Metadata stored with a zoo checkpoint (accuracy, parameter count, seed, ...); ``{}`` if untrained."""
    path = models_dir() / f"{name}.safetensors"
    return checkpoint_metadata(path)["meta"] if path.is_file() else {}


# ----------------------------------------------------------------------------- training


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
        weight_decay: float, seed: int, on_epoch: Callable[[int, dict], None] | None = None,
        task: str = "classification") -> nn.Module:
    """The zoo recipe: AdamW with a one-cycle cosine schedule, cross-entropy (for ``task="lm"`` the mean
    next-token cross-entropy over all tokens), shuffled minibatches from a seeded generator; trains in place."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()

    def step(xb, yb) -> float:
        out = model(xb)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1)) if task == "lm" else loss_fn(out, yb)
        loss.backward()
        return loss.item()

    train_epochs(model, x, y, epochs=epochs, batch_size=batch_size, gen=gen, optimizer=opt, scheduler=sched,
                 step=step, on_epoch=on_epoch)
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(name: str, *, out_dir: str | Path | None = None, seed: int | None = None, epochs: int | None = None,
          on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """Train zoo model ``name`` from scratch and write its checkpoint and model card; returns the card."""
    from .data import load_data
    from .evaluation import evaluate

    entry = get_entry(name)
    seed = entry.seed if seed is None else seed
    epochs = entry.epochs if epochs is None else epochs
    if epochs < 1:
        raise ModelError(f"expected epochs >= 1, got {epochs}")
    out_dir = Path(out_dir) if out_dir is not None else models_dir()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir}: is a file; expected a directory for the checkpoint and its card")
    check_output(out_dir / f"{name}.safetensors", what="--out")
    x, y = load_data(entry.data, "train").tensors
    t0 = time.perf_counter()
    with deterministic():
        torch.manual_seed(seed)
        model = entry.build()
        fit(model, x, y, epochs=epochs, lr=entry.lr, batch_size=entry.batch_size,
            weight_decay=entry.weight_decay, seed=seed, on_epoch=on_epoch, task=entry.task)
    seconds = time.perf_counter() - t0
    for p in model.parameters():
        p.requires_grad_(False)
    test, train_eval = (evaluate(model, load_data(entry.data, split), task=entry.task) for split in ("test", "train"))
    command = f"hwfault zoo train {name}" + (f" --seed {seed}" if seed != entry.seed else "") + (
        f" --epochs {epochs}" if epochs != entry.epochs else "")
    card = {
        "name": name, "arch": name, "description": entry.description, "data": entry.data,
        "split": _split_text(entry.data), "task": entry.task,
        "test_accuracy": round(test.accuracy, 6), "test_loss": round(test.loss, 6),
        "train_accuracy": round(train_eval.accuracy, 6),
        **({"test_perplexity": round(test.metrics["perplexity"], 6), "test_token_accuracy": round(test.accuracy, 6),
            "train_loss": round(train_eval.loss, 6)} if entry.task == "lm" else {}),
        "parameters": sum(p.numel() for p in model.parameters()),
        "command": command, "seed": seed, "epochs": epochs, "lr": entry.lr, "batch_size": entry.batch_size,
        "weight_decay": entry.weight_decay, "optimizer": "AdamW + one-cycle cosine schedule",
        "train_seconds": round(seconds, 1), "torch": torch.__version__, "python": platform.python_version(),
    }
    path = save_checkpoint(model, out_dir / f"{name}.safetensors", arch=name, meta=card)
    card["sha256"] = _sha256(path)
    write_text(out_dir / f"{name}.md", _card_markdown(card), what="model card")
    return card


def _split_text(data: str) -> str:
    if data == "pycode":
        return _pycode_split()
    return {
        "digits": "sklearn load_digits, stratified 70/30 split (seed 0): 1257 train / 540 test, pixels / 16",
        "mnist1d": "mnist1d make_dataset(get_dataset_args()) with seed 42: 4000 train / 1000 test, length 40",
    }.get(data, data)


def _pycode_split() -> str:
    from .text import CONTEXT, CORPUS_FILES, CORPUS_PYTHON, text_arrays

    n = {s: len(text_arrays(s)[0]) for s in ("train", "test")}
    return (f"{len(CORPUS_FILES)} modules of the CPython {CORPUS_PYTHON} standard library (hwfault/corpus), "
            f"last 10% of the text is test: {n['train']} train / {n['test']} test windows of {CONTEXT} characters")


def _card_markdown(c: dict) -> str:
    scores = [
        ("test accuracy", f"{100 * c['test_accuracy']:.2f}% (loss {c['test_loss']:.4f})"),
        ("train accuracy", f"{100 * c['train_accuracy']:.2f}%"),
    ] if c.get("task", "classification") == "classification" else [
        ("task", "lm: next-character prediction, (B, T) int64 ids in, (B, T, vocab) logits out"),
        ("test loss", f"{c['test_loss']:.4f} nats/char ({c['test_loss'] / math.log(2):.3f} bits/char)"),
        ("test perplexity", f"{c['test_perplexity']:.4f}"),
        ("test token accuracy", f"{100 * c['test_token_accuracy']:.2f}%"),
        ("train loss", f"{c['train_loss']:.4f} nats/char (token accuracy {100 * c['train_accuracy']:.2f}%)"),
    ]
    fields = [
        ("data", f"`{c['data']}`: {c['split']}"),
        *scores,
        ("parameters", f"{c['parameters']:,}"),
        ("training", f"{c['epochs']} epochs, {c['optimizer']}, lr {c['lr']}, batch {c['batch_size']}, weight decay "
                     f"{c['weight_decay']}"),
        ("seed", f"{c['seed']} (one thread, deterministic algorithms)"),
        ("training time", f"{c['train_seconds']} s on {platform.machine()} CPU, torch {c['torch']}, Python {c['python']}"),
        ("checkpoint", f"`{c['name']}.safetensors` (safetensors state dict), sha256 `{c['sha256'][:16]}...`"),
    ]
    return card(f"Model card: {c['name']}", f"{c['description']}.", fields, footer=[
        f"Reproduce: `{c['command']}` (writes `models/{c['name']}.safetensors` and this card).",
        f'Load: `hwfault.load_model("{c["name"]}")` returns the eval-mode `nn.Module`.'])
