"""Real-size networks for the bench, in plain torch (torchvision is not a dependency).

- :func:`resnet18`: CIFAR-shaped ResNet-18 (3x32x32 in, 10 classes; BasicBlock [2, 2, 2, 2], a 3x3
  stem conv without max-pool), 11.2M parameters.
- :func:`resnet50`: CIFAR-shaped ResNet-50 (Bottleneck [3, 4, 6, 3], same stem), 23.5M parameters.
- :func:`vit`: a ViT on 32x32 (patch 4: 64 patches and a class token, dim 384, depth 6, 6 heads,
  pre-LN, GELU MLP of 4x), 10.7M parameters.
- :func:`gpt`: a GPT-style decoder LM (token and learned position embeddings, pre-LN causal
  blocks, dim 384, depth 8, 6 heads, context 128, vocabulary 98 = the zoo's character vocabulary
  ``hwfault.text.VOCAB_SIZE``); (B, T) int64 ids in, (B, T, vocab) logits out; 14.3M parameters.

Weights are untrained but deterministic: each builder seeds its own generator (``seed=``), so the
same seed gives the same tensors on every call and in every process. Batch-norm layers are returned
in eval mode with running statistics calibrated on a few batches of seeded N(0, 1) inputs (the
statistics a trained network's eval mode would use, up to the data), so activations keep a sane
scale through the depth; the last batch norm of each residual branch starts at gamma 0.5. The
classifiers' head bias is centred on seeded inputs (mean logit 0 per class), so their predictions
on N(0, 1) inputs spread over the classes (the bench labels inputs with the model's own predictions).

All four are ``torch.fx.symbolic_trace``-able and ``torch.export``-able: no data-dependent control
flow, sizes read with ``Tensor.size(i)``, the causal mask a registered (non-persistent) buffer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CHAR_VOCAB = 98  # hwfault.text.VOCAB_SIZE: tab, newline, printable ASCII 32..126 and UNK
PARAMS = {"resnet18": 11_173_962, "resnet50": 23_520_842, "vit": 10_695_562, "gpt": 14_320_994}


# ----------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem conv (64 channels, stride 1, no max-pool), four stages at
    64/128/256/512 planes (strides 1, 2, 2, 2), global average pool, Linear head."""

    def __init__(self, block: type, layers: list[int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


# ----------------------------------------------------------------------------- transformers


class Attention(nn.Module):
    """Multi-head self-attention written out (no nn.MultiheadAttention, no fused kernel), so every
    weight is a plain Linear; ``causal`` masks future positions with a registered buffer."""

    def __init__(self, dim: int, heads: int, context: int = 0):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if context:
            mask = torch.ones(context, context, dtype=torch.bool).triu(1)  # True = masked (future)
            self.register_buffer("mask", mask.view(1, 1, context, context), persistent=False)
        else:
            self.mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.size(0), x.size(1)
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, hd)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
        if self.mask is not None:
            # torch.narrow, not self.mask[:, :, :t, :t]: under fx the buffer is a real tensor and t a Proxy
            att = att.masked_fill(self.mask.narrow(2, 0, t).narrow(3, 0, t), float("-inf"))
        out = att.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, self.heads * self.hd))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP of ``ff``."""

    def __init__(self, dim: int, heads: int, ff: int, context: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, context)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ff)
        self.fc2 = nn.Linear(ff, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    """Vision transformer: a strided conv patch embedding, a class token, learned position
    embeddings, ``depth`` pre-LN blocks, final LayerNorm, Linear head on the class token."""

    def __init__(self, image: int = 32, patch: int = 4, in_channels: int = 3, num_classes: int = 10,
                 dim: int = 384, depth: int = 6, heads: int = 6, ff: int = 1536):
        super().__init__()
        n = (image // patch) ** 2
        self.patch = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, ff) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        h = torch.cat([self.cls.expand(h.size(0), -1, -1), h], dim=1) + self.pos
        h = self.norm(self.blocks(h))
        return self.head(h[:, 0])


class GPT(nn.Module):
    """GPT-style decoder LM: token + learned position embeddings, ``depth`` pre-LN causal blocks,
    final LayerNorm, Linear head (untied). Inputs up to ``context`` tokens."""

    def __init__(self, vocab: int = CHAR_VOCAB, context: int = 128, dim: int = 384, depth: int = 8,
                 heads: int = 6, ff: int = 1536):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, context, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, ff, context) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos[:, : x.size(1)]
        return self.head(self.norm(self.blocks(h)))


# ----------------------------------------------------------------------------- initialisation


def _init_(model: nn.Module, seed: int) -> None:
    """Deterministic init from ``seed``: Kaiming-normal convs (fan-out), truncated-normal 0.02
    Linear / embedding / position weights (transformers) or PyTorch-style uniform (ResNet heads),
    zero biases, unit LayerNorms, batch norms gamma 1 (0.5 on the last of a residual branch)."""
    g = torch.Generator().manual_seed(seed)
    transformer = isinstance(model, (ViT, GPT))
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                if transformer:  # the patch embedding: a Linear on flattened patches
                    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(fan_in))
                else:
                    fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                if transformer:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g).clamp_(-2, 2) * 0.02)
                else:
                    bound = 1 / math.sqrt(m.in_features)
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2 * bound - bound)
            elif isinstance(m, nn.Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g).clamp_(-2, 2) * 0.02)
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.fill_(0.5 if name.endswith(("bn2", "bn3")) and _is_last_bn(model, name) else 1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        for pname, p in model.named_parameters(recurse=False):
            p.copy_(torch.randn(p.shape, generator=g).clamp_(-2, 2) * 0.02)


def _is_last_bn(model: nn.Module, name: str) -> bool:
    """Whether batch norm ``name`` closes a residual branch (bn2 of a BasicBlock, bn3 of a Bottleneck)."""
    block = model.get_submodule(name.rsplit(".", 1)[0])
    return (isinstance(block, BasicBlock) and name.endswith("bn2")) or (
        isinstance(block, Bottleneck) and name.endswith("bn3"))


@torch.no_grad()
def _calibrate_bn(model: nn.Module, seed: int, shape: tuple[int, ...], batches: int = 4, batch: int = 32) -> None:
    """Running statistics of every batch norm from ``batches`` seeded N(0, 1) batches (cumulative
    average: momentum None), then eval mode."""
    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for _ in range(batches):
        model(torch.randn((batch, *shape), generator=g))
    for m in bns:
        m.momentum = 0.1
    model.eval()


@torch.no_grad()
def _centre_head(model: nn.Module, head: nn.Linear, seed: int, shape: tuple[int, ...], n: int = 128) -> None:
    """Subtract the mean logit over ``n`` seeded N(0, 1) inputs from the head's bias, so an untrained
    classifier's predictions spread over the classes instead of collapsing on one or two."""
    g = torch.Generator().manual_seed(seed + 2)
    head.bias.sub_(model(torch.randn((n, *shape), generator=g)).mean(0))


# ----------------------------------------------------------------------------- builders


def _resnet(block, layers: list[int], num_classes: int, seed: int, calibrate: bool) -> ResNet:
    """A CIFAR ResNet with seeded weights, its norms calibrated and its head centred, in eval mode."""
    model = ResNet(block, layers, num_classes)
    _init_(model, seed)
    if calibrate:
        _calibrate_bn(model, seed, (3, 32, 32))
        _centre_head(model, model.fc, seed, (3, 32, 32))
    return model.eval()


def resnet18(num_classes: int = 10, seed: int = 0, calibrate: bool = True) -> ResNet:
    """CIFAR ResNet-18 (BasicBlock [2, 2, 2, 2]), 3x32x32 inputs, eval mode; 11.2M parameters."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, seed, calibrate)


def resnet50(num_classes: int = 10, seed: int = 0, calibrate: bool = True) -> ResNet:
    """CIFAR ResNet-50 (Bottleneck [3, 4, 6, 3]), 3x32x32 inputs, eval mode; 23.5M parameters."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, seed, calibrate)


def vit(num_classes: int = 10, seed: int = 0, depth: int = 6, dim: int = 384, heads: int = 6) -> ViT:
    """ViT on 3x32x32 (patch 4, dim 384, depth 6, 6 heads), eval mode; 10.7M parameters."""
    model = ViT(num_classes=num_classes, dim=dim, depth=depth, heads=heads, ff=4 * dim)
    _init_(model, seed)
    model.eval()
    _centre_head(model, model.head, seed, (3, 32, 32))
    return model


def gpt(vocab: int = CHAR_VOCAB, context: int = 128, seed: int = 0, depth: int = 8, dim: int = 384,
        heads: int = 6) -> GPT:
    """GPT-style causal LM (dim 384, depth 8, 6 heads, context 128), (B, T) ids -> (B, T, vocab)
    logits, eval mode; 14.3M parameters with the character vocabulary."""
    model = GPT(vocab=vocab, context=context, dim=dim, depth=depth, heads=heads, ff=4 * dim)
    _init_(model, seed)
    return model.eval()


NETS = {"resnet18": resnet18, "resnet50": resnet50, "vit": vit, "gpt": gpt}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
