"""Number formats and bit operations against numpy/torch references and their invariants."""

import numpy as np
import pytest
import torch

from hwfault.errors import SpecError
from hwfault.formats import FORMATS, NumberFormat, bit_deltas, flip_bits, list_formats, stick_bits

ALL = ["fp32", "fp16", "bf16", "int2", "int4", "int8", "int16"]


def gen(i=0):
    return torch.Generator().manual_seed(2024 + i)


def weights(i=0, shape=(6, 3, 2, 2)):
    """Random weights whose channels (dim 0) span magnitudes 1e-3 .. 1."""
    return torch.randn(shape, generator=gen(i)) * torch.logspace(-3, 0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))


def bits_of(x: torch.Tensor) -> torch.Tensor:
    """float32 values as their int32 bit patterns, for bit-exact comparison."""
    return x.contiguous().view(torch.int32)


def test_names_and_parse():
    assert list_formats() == list(FORMATS) == ["fp32", "fp16", "bf16"] + [f"int{n}" for n in range(2, 17)]
    for name in FORMATS:
        f = NumberFormat.parse(name)
        assert f.name == name and f.is_int == name.startswith("int")
    assert NumberFormat.parse("INT4", per_channel=True) == NumberFormat("int", 4, True)
    assert NumberFormat.parse("bf16").bits == 16 and NumberFormat.parse("fp32").bits == 32
    assert NumberFormat.parse("fp16", per_channel=True).per_channel is False  # floats have no scale


@pytest.mark.parametrize("text, hint", [("int1", "2..16"), ("int17", "2..16"), ("fp8", "did you mean"),
                                        ("float32", "did you mean 'fp32'"), ("", "expected")])
def test_parse_errors(text, hint):
    with pytest.raises(SpecError, match="expected") as e:
        NumberFormat.parse(text)
    assert hint in str(e.value) and "\n" not in str(e.value)


def test_direct_construction_is_validated():
    for kind, bits in [("int", 1), ("int", 17), ("fp16", 32), ("fp64", 64)]:
        with pytest.raises(SpecError):
            NumberFormat(kind, bits)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("per_channel", [False, True])
def test_round_trip_and_code_range(name, per_channel):
    f = NumberFormat.parse(name, per_channel)
    w = weights(1)
    w[0, 0, 0, 0] = -0.0
    codes = f.encode(w)
    assert codes.dtype == torch.int64 and codes.shape == w.shape
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**f.bits
    q = f.quantize(w)
    assert q.dtype == torch.float32 and torch.equal(bits_of(f.decode(codes, f.scale(w))), bits_of(q))
    assert torch.equal(f.quantize(q), q)  # idempotent
    if f.is_int:
        signed = torch.where(codes >= 2 ** (f.bits - 1), codes - 2**f.bits, codes)
        assert int(signed.abs().max()) == f.qmax  # the largest |w| maps to qmax exactly
        assert bool(((q - w).abs() <= f.scale(w) / 2 * (1 + 1e-6)).all())  # round to nearest


def test_fp32_is_the_identity_on_bit_patterns():
    f = NumberFormat.parse("fp32")
    w = torch.tensor([0.0, -0.0, 1.0, -2.5, float("inf"), -float("inf"), 1e-45, 3.4e38])
    # quiet, signalling and negative NaN
    nan = torch.tensor([0x7FC00000, 0x7F800001, -1], dtype=torch.int32).view(torch.float32)
    w = torch.cat([w, nan])
    codes = f.encode(w)
    assert torch.equal(codes, bits_of(w).to(torch.int64) & 0xFFFFFFFF)
    assert torch.equal(bits_of(f.decode(codes)), bits_of(w))
    q = f.quantize(w)
    assert torch.equal(bits_of(q), bits_of(w)) and q.data_ptr() != w.data_ptr()  # a copy
    assert torch.equal(f.step(w), torch.zeros_like(w))


@pytest.mark.parametrize("name, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_formats_match_torch_casting(name, dtype):
    f = NumberFormat.parse(name)
    w = weights(2) * 1e3
    assert torch.equal(f.quantize(w), w.to(dtype).float())
    assert torch.equal(f.encode(w), w.to(dtype).view(torch.int16).to(torch.int64) & 0xFFFF)


def test_fp16_step_is_numpy_spacing():
    f = NumberFormat.parse("fp16")
    w = torch.cat([weights(3).reshape(-1) * 1e4, torch.tensor([0.0, -0.0, 1.0, -1.0, 6e-8, 65504.0])])
    ref = np.abs(np.spacing(np.abs(w[:-1].numpy().astype(np.float16)))).astype(np.float32)
    assert np.array_equal(f.step(w).numpy()[:-1], ref)
    assert f.step(w)[-1] == float("inf")  # the largest finite fp16: the next magnitude is Inf


def test_bf16_step_is_the_spacing_of_an_8_bit_mantissa():
    f = NumberFormat.parse("bf16")
    w = torch.tensor([1.0, -1.5, 3.0, 1024.0])
    expect = torch.tensor([2.0**-7, 2.0**-7, 2.0**-6, 2.0**3])
    assert torch.equal(f.step(w), expect)


def test_int_scales_per_tensor_and_per_channel():
    w = weights(4)
    w[2] = 0.0  # an all-zero channel gets scale 1
    t, c = NumberFormat.parse("int8"), NumberFormat.parse("int8", per_channel=True)
    assert t.scale(w).shape == () and t.scale(w) == w.abs().max() / 127
    sc = c.scale(w)
    ref = w.abs().amax(dim=(1, 2, 3)) / 127
    ref[2] = 1.0
    assert sc.shape == (6, 1, 1, 1) and torch.equal(sc.reshape(-1), ref)
    assert torch.equal(c.step(w), sc.expand_as(w)) and torch.equal(t.step(w), t.scale(w).expand_as(w))
    assert t.scale(torch.zeros(3)) == 1.0 and c.scale(torch.ones(5)).shape == ()  # 1-d: per tensor
    assert torch.equal(NumberFormat.parse("fp16").scale(w), torch.ones(()))


def test_int8_codes_are_twos_complement():
    f = NumberFormat.parse("int8")
    w = weights(5)
    s = f.scale(w)
    q = torch.round(w / s).numpy().astype(np.int64)
    assert np.array_equal(f.encode(w).numpy(), np.array(q, np.int8).view(np.uint8))
    codes = torch.arange(256)  # every pattern decodes as the int8 it spells
    as_int8 = torch.from_numpy(codes.numpy().astype(np.uint8).view(np.int8)).float()
    assert torch.equal(f.decode(codes, torch.tensor(0.5)), as_int8 * 0.5)
    assert torch.equal(f.encode(torch.tensor([-64.0]), torch.tensor(0.5)), torch.tensor([128]))  # -128 storable
    with pytest.raises(ValueError, match="scale"):
        f.decode(codes)


def test_int8_sign_bit_flip_changes_by_128_steps():
    f = NumberFormat.parse("int8")
    w = weights(6, (50,))
    s = f.scale(w)
    q = f.quantize(w)
    after = f.decode(flip_bits(f.encode(w), torch.arange(50), torch.full((50,), 7)), s)
    expect = torch.where(q >= 0, q - 128 * s, q + 128 * s)
    assert torch.allclose(after, expect, rtol=1e-6, atol=1e-6 * float(s))
    assert torch.equal(torch.round(after / s) - torch.round(q / s), torch.where(q >= 0, -128.0, 128.0))
    assert torch.allclose(bit_deltas(f, q)[:, 7], torch.where(q >= 0, -128 * s, 128 * s), rtol=1e-6)


def test_fp32_sign_and_exponent_flips():
    f = NumberFormat.parse("fp32")
    w = weights(7, (20,))
    neg = f.decode(flip_bits(f.encode(w), torch.arange(20), torch.full((20,), 31)))
    assert torch.equal(neg, -w)
    one = torch.tensor([1.0])  # 0x3F800000: flipping bit 30 gives 0x7F800000 = +Inf
    assert f.decode(flip_bits(f.encode(one), torch.tensor([0]), torch.tensor([30]))) == float("inf")
    d = bit_deltas(f, one)
    assert d.shape == (1, 32) and d[0, 30] == float("inf") and d[0, 31] == -2.0 and d[0, 0] == 2.0**-23


@pytest.mark.parametrize("name", ALL)
def test_flip_twice_is_identity_and_inputs_untouched(name):
    f = NumberFormat.parse(name)
    codes = f.encode(weights(8))
    before = codes.clone()
    idx = torch.randperm(codes.numel(), generator=gen(8))[:40]  # distinct elements
    bit = torch.randint(f.bits, (40,), generator=gen(9))
    once = flip_bits(codes, idx, bit)
    assert torch.equal(flip_bits(once, idx, bit), codes) and torch.equal(codes, before)
    assert torch.equal(once.reshape(-1)[idx] ^ codes.reshape(-1)[idx], 1 << bit)  # exactly those bits changed
    assert (once != codes).sum() == 40
    assert torch.equal(flip_bits(codes, torch.cat([idx, idx]), torch.cat([bit, bit])), codes)  # pairs cancel


def test_flip_of_several_bits_of_one_element():
    codes = torch.tensor([[0b1010, 0], [0, 0]])
    out = flip_bits(codes, torch.tensor([0, 0, 3, 3, 3]), torch.tensor([1, 0, 2, 2, 5]))
    assert torch.equal(out, torch.tensor([[0b1001, 0], [0, 0b100000]]))


def test_stick_bits():
    codes = torch.tensor([0b1010, 0b0000, 0b1111])
    assert torch.equal(stick_bits(codes, torch.tensor([0, 0]), torch.tensor([1, 3]), 1), codes)  # already set
    out = stick_bits(codes, torch.tensor([0, 2]), torch.tensor([0, 0]), 0)
    assert torch.equal(out, torch.tensor([0b1010, 0, 0b1110]))
    out = stick_bits(codes, torch.tensor([1, 1, 2]), torch.tensor([0, 2, 3]), torch.tensor([1, 1, 0]))
    assert torch.equal(out, torch.tensor([0b1010, 0b0101, 0b0111]))  # two bits of one element both kept
    assert torch.equal(codes, torch.tensor([0b1010, 0b0000, 0b1111]))
    with pytest.raises(ValueError, match="expected"):
        stick_bits(codes, torch.tensor([0]), torch.tensor([0]), 2)
    with pytest.raises(IndexError, match="expected"):
        flip_bits(codes, torch.tensor([3]), torch.tensor([0]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("per_channel", [False, True])
def test_bit_deltas_agree_with_flip_bits(name, per_channel):
    f = NumberFormat.parse(name, per_channel)
    w = weights(10)
    s, q = f.scale(w), f.quantize(w)
    d = bit_deltas(f, q, s if f.is_int else None)
    assert d.shape == (*w.shape, f.bits) and d.dtype == torch.float32
    assert torch.allclose(bit_deltas(f, q), d, rtol=1e-5, atol=0, equal_nan=True)  # default scale from w_q
    idx = torch.randint(w.numel(), (64,), generator=gen(11))
    bit = torch.randint(f.bits, (64,), generator=gen(12))
    for i, b in zip(idx.tolist(), bit.tolist()):
        after = f.decode(flip_bits(f.encode(q, s), torch.tensor([i]), torch.tensor([b])), s)
        ref = after.reshape(-1)[i] - q.reshape(-1)[i]
        got = d.reshape(-1, f.bits)[i, b]
        assert torch.equal(got, ref) or (got.isnan() and ref.isnan())
