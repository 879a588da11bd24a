"""Chip specs: every preset loads and round-trips; every bad spec or file is one SpecError line naming the field;
the fault registry is the one source of the fault kinds (schema, union, FAULT_KINDS, glossary, models)."""

import math
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

import hwfault
import hwfault.faults as faults_pkg
from hwfault.cli import main
from hwfault.errors import SpecError
from hwfault.faults import registry
from hwfault.faults.base import FaultModel
from hwfault.faults.config import FaultConfig
from hwfault.spec import (CHIPS_DIR, FAULT_KINDS, SCHEMA_VERSION, ChipSpec, DeviceSpec, FormatSpec, describe_chip,
                          list_chips, load_chip, parse_chip)

PRESETS = list_chips()
OK = 'name = "x"\n'                       # top-level keys go before any table
FMT = '[format]\nkind = "int8"\n'


def bad(text: str, source: str = "chip.toml") -> str:
    with pytest.raises(SpecError) as e:
        parse_chip(text, source)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{source}: "), msg
    return msg


# ----------------------------------------------------------------------------- presets


def test_preset_list():
    assert PRESETS == sorted(PRESETS) == sorted(p.stem for p in CHIPS_DIR.glob("*.toml"))
    assert {"fp32-soft-errors", "fp16-sram", "bf16-sram", "int8-sram-nominal", "int8-sram-0.55v", "int8-sram-0.5v",
            "rram-4bit", "pcm-1day"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_round_trips(name):
    spec = load_chip(name)
    assert spec.name == name and spec.schema_version == SCHEMA_VERSION
    assert spec.description and spec.references and spec.faults
    assert all(f.source for f in spec.faults)
    assert parse_chip(spec.to_toml()) == spec
    assert ChipSpec.model_validate(spec.to_dict()) == spec
    assert load_chip(CHIPS_DIR / f"{name}.toml") == spec  # by path too
    text = describe_chip(spec)
    assert text.startswith(name) and spec.format.kind in text and "coverage" in text
    assert all(f"{i}. {f.kind}:" in text for i, f in enumerate(spec.faults, 1))


def test_preset_numbers():
    """The key numbers of facts.md sections 5-6."""
    ber = {n: load_chip(n).faults[0].ber for n in ("int8-sram-0.55v", "int8-sram-0.5v", "fp32-soft-errors")}
    assert ber == {"int8-sram-0.55v": 0.0023, "int8-sram-0.5v": 0.0156, "fp32-soft-errors": 1e-6}
    for n in ("fp16-sram", "bf16-sram", "int8-sram-nominal"):
        f = load_chip(n).faults
        assert [x.kind for x in f] == ["bitflip"] and 0 < f[0].ber <= 1e-6
    rram = load_chip("rram-4bit")
    assert (rram.format.kind, rram.format.scale) == ("int4", "per-channel")
    add, stuck = rram.faults
    assert add.kind == "additive" and 0.02 <= add.sigma <= 0.04
    assert (stuck.sa0, stuck.sa1, stuck.sa1_value) == (0.0175, 0.0904, "max")
    pcm = load_chip("pcm-1day")
    assert pcm.format.kind == "fp32"
    assert [f.kind for f in pcm.faults] == ["pcm", "drift", "read"]  # order kept
    assert pcm.faults[1].t == 86400 and pcm.faults[1].compensation and pcm.faults[1].nu_mean is None


def test_at_least_six_presets_with_citations():
    names = list_chips()
    assert len(names) >= 6
    assert {"int8-sram-0.5v", "int8-sram-0.55v", "rram-4bit", "pcm-1day", "fp32-soft-errors", "fp16-sram"} <= set(names)
    for n in names:
        spec = load_chip(n)
        assert spec.name == n and spec.references and spec.schema_version == SCHEMA_VERSION
        assert parse_chip(spec.to_toml()) == spec


def test_fault_order_is_kept():
    spec = load_chip("pcm-1day")
    assert [f.kind for f in spec.faults] == ["pcm", "drift", "read"]


def test_preset_name_must_match_file(tmp_path, monkeypatch):
    import hwfault.spec as S

    (tmp_path / "alpha.toml").write_text('name = "beta"\n' + FMT)
    monkeypatch.setattr(S, "CHIPS_DIR", tmp_path)
    with pytest.raises(SpecError, match=r"alpha.toml: name: expected 'alpha' \(the preset's file name\), got 'beta'"):
        S.load_chip("alpha")


# ----------------------------------------------------------------------------- the schema


def test_defaults_and_minimal_spec():
    spec = parse_chip(OK + FMT)
    assert spec == ChipSpec(name="x", format=FormatSpec(kind="int8"))
    assert spec.schema_version == 1 and spec.coverage == 0.999 and spec.faults == [] and spec.references == []
    assert spec.format.scale == "per-tensor" and spec.device == DeviceSpec()
    assert spec.device.types == ["conv", "linear"] and spec.device.params == [] and spec.device.weights_only
    assert "none" in describe_chip(spec)
    with pytest.raises(ValidationError):  # frozen
        spec.name = "y"


def test_fault_defaults():
    text = OK + "".join(f'[[faults]]\nkind = "{k}"\n{extra}' for k, extra in [
        ("additive", "sigma = 0.1\n"), ("multiplicative", "sigma = 0\n"), ("pcm", ""), ("read", "sigma = 0.02\n"),
        ("drift", "t = 3600\n"), ("bitflip", "ber = 0\n"), ("stuck", "")]) + FMT
    spec = parse_chip(text)
    assert [f.kind for f in spec.faults] == list(FAULT_KINDS)[:7]  # (the activation kinds follow: test_activation.py)
    add, mul, pcm, read, drift, flip, stuck = spec.faults
    assert pcm.g_max == 25.0 and read.relative_to == "max" and mul.sigma == 0.0 and isinstance(mul.sigma, float)
    assert (drift.t, drift.t0, drift.compensation, drift.nu_mean, drift.nu_std) == (3600.0, 20.0, True, None, None)
    assert flip.mode == "persistent" and add.source == ""
    assert (stuck.sa0, stuck.sa1, stuck.granularity, stuck.sa0_value, stuck.sa1_value) == (0, 0, "weight", "zero", "max")
    assert parse_chip(spec.to_toml()) == spec


def test_several_faults_keep_their_order_through_the_round_trip():
    kinds = ["read", "bitflip", "additive", "stuck", "bitflip", "drift"]
    body = {"read": "sigma = 0.01", "bitflip": "ber = 1e-3", "additive": "sigma = 0.05", "stuck": "sa1 = 0.01",
            "drift": "t = 1e6\nnu_mean = 0.05\nnu_std = 0.01\ncompensation = false"}
    text = OK + "".join(f'[[faults]]\nkind = "{k}"\n{body[k]}\n' for k in kinds) + FMT
    spec = parse_chip(text)
    assert [f.kind for f in spec.faults] == kinds
    back = parse_chip(spec.to_toml())
    assert back == spec and [f.kind for f in back.faults] == kinds
    assert back.to_dict()["faults"][5] == {"kind": "drift", "t": 1e6, "t0": 20.0, "compensation": False,
                                           "nu_mean": 0.05, "nu_std": 0.01, "source": ""}


def test_round_trip_of_awkward_strings_and_numbers():
    spec = ChipSpec(name='odd "chip" \\ é', description="line1\nline2\ttab \x01 \x7f", references=["a", 'b"'],
                    coverage=1 - 1e-12, format={"kind": "int16", "scale": "per-channel"},
                    device={"types": [], "params": ["features.*", "fc?"], "weights_only": False},
                    faults=[{"kind": "bitflip", "ber": 5e-324}, {"kind": "additive", "sigma": 1e300},
                            {"kind": "read", "sigma": 0.1, "relative_to": "weight", "source": "x = 'y'"}])
    assert parse_chip(spec.to_toml()) == spec


@pytest.mark.parametrize("cov, ok", [(0.5, True), (1e-9, True), (0.999999, True), (0, False), (1, False),
                                     (1.5, False), (-0.1, False)])
def test_coverage_bounds(cov, ok):
    text = OK + f"coverage = {cov}\n" + FMT
    if ok:
        assert parse_chip(text).coverage == cov
    else:
        assert f"coverage: expected a probability in (0, 1), got {cov}" in bad(text)


@pytest.mark.parametrize("kind", ["fp32", "fp16", "bf16", "int2", "int4", "int8", "int16"])
def test_formats(kind):
    scale = "per-channel" if kind.startswith("int") else "per-tensor"
    spec = parse_chip(OK + f'[format]\nkind = "{kind}"\nscale = "{scale}"\n')
    assert spec.format.kind == kind and spec.format.is_int == kind.startswith("int")


# ----------------------------------------------------------------------------- one line per bad spec

F = OK + FMT  # a valid start; [[faults]] tables follow


@pytest.mark.parametrize("text, needle", [
    # faults
    (F + '[[faults]]\nkind = "bitflip"\nber = 1.5\n', "faults[0].ber: expected a probability in [0, 1], got 1.5"),
    (F + '[[faults]]\nkind = "bitflip"\nber = -1e-3\n', "faults[0].ber: expected a probability in [0, 1], got -0.001"),
    (F + '[[faults]]\nkind = "bitflip"\nber = nan\n', "faults[0].ber: expected a finite number, got nan"),
    (F + '[[faults]]\nkind = "additive"\nsigma = inf\n', "faults[0].sigma: expected a finite number, got inf"),
    (F + '[[faults]]\nkind = "additive"\nsigma = -inf\n', "faults[0].sigma: expected a finite number, got -inf"),
    (F + '[[faults]]\nkind = "additive"\nsigma = "abc"\n', "faults[0].sigma: expected a number, got 'abc'"),
    (F + '[[faults]]\nkind = "additive"\nsigma = "0.1"\n', "faults[0].sigma: expected a number, got '0.1'"),
    (F + '[[faults]]\nkind = "additive"\nsigma = true\n', "faults[0].sigma: expected a number, got true"),
    (F + '[[faults]]\nkind = "additive"\nsigma = [0.1]\n', "faults[0].sigma: expected a number, got [0.1]"),
    (F + '[[faults]]\nkind = "multiplicative"\nsigma = -0.5\n', "faults[0].sigma: expected a number >= 0, got -0.5"),
    (F + '[[faults]]\nkind = "additive"\n', "faults[0].sigma: required field missing"),
    (F + '[[faults]]\nkind = "additive"\nsigma = 0.1\n[[faults]]\nkind = "bitfilp"\nber = 0.1\n',
     "faults[1].kind: unknown fault kind 'bitfilp' (did you mean 'bitflip'?)"),
    (F + '[[faults]]\nkind = "noise"\n', "faults[0].kind: unknown fault kind 'noise' (choose from: activation-bitflip, activation-stuck, additive, bitflip"),
    (F + '[[faults]]\nber = 0.1\n', "faults[0].kind: required field missing (choose from: additive, multiplicative"),
    (F + '[[faults]]\nkind = 3\n', "faults[0].kind: expected a string"),
    (OK + "faults = [1]\n" + FMT, "faults[0]: expected a table"),
    (OK + 'faults = "bitflip"\n' + FMT, "faults: expected a list"),
    (F + '[[faults]]\nkind = "bitflip"\nbre = 0.1\n', "faults[0].bre: unknown field for a 'bitflip' fault (did you mean 'ber'?)"),
    (F + '[[faults]]\nkind = "bitflip"\nber = 0.1\nmode = "persistant"\n',
     "faults[0].mode: expected 'persistent' or 'transient', got 'persistant' (did you mean 'persistent'?)"),
    (F + '[[faults]]\nkind = "read"\nsigma = 0.1\nrelative_to = "mean"\n', "faults[0].relative_to: expected 'max' or 'weight', got 'mean'"),
    (F + '[[faults]]\nkind = "pcm"\ng_max = 0\n', "faults[0].g_max: expected a number > 0, got 0"),
    (F + '[[faults]]\nkind = "drift"\n', "faults[0].t: required field missing"),
    (F + '[[faults]]\nkind = "drift"\nt = 0\n', "faults[0].t: expected a number > 0, got 0"),
    (F + '[[faults]]\nkind = "drift"\nt = 10\nt0 = -20\n', "faults[0].t0: expected a number > 0, got -20"),
    (F + '[[faults]]\nkind = "drift"\nt = 10\nnu_mean = -0.1\n', "faults[0].nu_mean: expected a number >= 0, got -0.1"),
    (F + '[[faults]]\nkind = "drift"\nt = 10\ncompensation = "yes"\n', "faults[0].compensation: expected true or false, got 'yes'"),
    (F + '[[faults]]\nkind = "stuck"\nsa0 = 0.6\nsa1 = 0.5\n', "faults[0]: expected sa0 + sa1 <= 1, got 0.6 + 0.5"),
    (F + '[[faults]]\nkind = "stuck"\nsa1 = 2\n', "faults[0].sa1: expected a probability in [0, 1], got 2"),
    (F + '[[faults]]\nkind = "stuck"\nsa0 = 0.1\nsa0_value = "max"\n', "faults[0].sa0_value: expected 'zero', got 'max'"),
    (F + '[[faults]]\nkind = "stuck"\ngranularity = "cell"\n', "faults[0].granularity: expected 'weight' or 'bit', got 'cell'"),
    (F + '[[faults]]\nkind = "bitflip"\nber = 0.1\nsource = 7\n', "faults[0].source: expected a string, got 7"),
    # format
    (OK + '[format]\nkind = "int32"\n', "format.kind: expected an integer format int2 .. int16, got 'int32'"),
    (OK + '[format]\nkind = "int1"\n', "format.kind: expected an integer format int2 .. int16, got 'int1'"),
    (OK + '[format]\nkind = "fp33"\n', "format.kind: unknown number format 'fp33' (did you mean 'fp32'?)"),
    (OK + '[format]\nkind = "INT8"\n', "format.kind: unknown number format 'INT8' (did you mean 'int8'?)"),
    (OK + '[format]\nkind = "bfloat16"\n', "format.kind: unknown number format 'bfloat16' (did you mean 'bf16'?)"),
    (OK + '[format]\nkind = "posit"\n', "format.kind: unknown number format 'posit'"),
    (OK + '[format]\nkind = 8\n', "format.kind: expected a string, got 8"),
    (OK + '[format]\nscale = "per-channel"\n', "format.kind: required field missing"),
    (OK + '[format]\nkind = "int8"\nscale = "per-row"\n', "format.scale: expected 'per-tensor', 'per-channel' or 'per-group', got 'per-row'"),
    (OK + '[format]\nkind = "fp16"\nscale = "per-channel"\n', "format.scale: expected 'per-tensor' for the float format 'fp16'"),
    (OK + '[format]\nkind = "int8"\nbits = 8\n', "format.bits: unknown field"),
    (OK + '[format]\nkind = "mxfp5"\n', "format.kind: unknown number format 'mxfp5' (did you mean 'mxfp4'?)"),
    (OK + '[format]\nkind = "mxfp4"\nscale = "per-channel"\n', "format.scale: expected no scale setting for the block format 'mxfp4'"),
    (OK + '[format]\nkind = "int4"\nscale = "per-group"\n', "format: expected group_size (weights per scale"),
    (OK + '[format]\nkind = "int4"\ngroup_size = 32\n', 'format.group_size: expected group_size only with scale = "per-group"'),
    (OK + '[format]\nkind = "int4"\nscale = "per-group"\ngroup_size = 0\n', "format.group_size: expected a number >= 1, got 0"),
    (OK + '[format]\nkind = "bf16"\nscale = "per-group"\ngroup_size = 8\n', "format.scale: expected 'per-tensor' for the float format 'bf16'"),
    (OK + 'format = "int8"\n', "format: expected a table, got 'int8'"),
    # device
    (F + '[device]\ntypes = ["conv", "lnear"]\n', "device.types: unknown component type 'lnear' (did you mean 'linear'?)"),
    (F + '[device]\ntypes = "conv"\n', "device.types: expected a list (TOML array), got 'conv'"),
    (F + '[device]\nparams = ["fc.*", ""]\n', "device.params[1]: expected a parameter-name glob"),
    (F + '[device]\nweights_only = 1\n', "device.weights_only: expected true or false, got 1"),
    (F + '[device]\nlayers = [1]\n', "device.layers: unknown field"),
    # top level
    ('description = "no name"\n' + FMT, "name: required field missing"),
    (OK, "format: required field missing"),
    ('name = ""\n' + FMT, "name: expected a non-empty one-line name"),
    ("name = 3\n" + FMT, "name: expected a string, got 3"),
    (OK + "fualts = []\n" + FMT, "fualts: unknown field (did you mean 'faults'?)"),
    (OK + "colour = 3\n" + FMT, "colour: unknown field"),
    (OK + 'references = "a paper"\n' + FMT, "references: expected a list (TOML array), got 'a paper'"),
    (OK + "references = [1]\n" + FMT, "references[0]: expected a string, got 1"),
    (OK + "coverage = nan\n" + FMT, "coverage: expected a finite number, got nan"),
    (OK + 'coverage = "high"\n' + FMT, "coverage: expected a number, got 'high'"),
    (OK + "schema_version = 2\n" + FMT, "schema_version: expected schema_version 1, got 2"),
    (OK + "schema_version = 0\n" + FMT, "schema_version: expected schema_version 1, got 0"),
    (OK + "schema_version = 1.0\n" + FMT, "schema_version: expected an integer, got 1.0"),
    ('schema_version = 2\n[format]\nkind = "int99"\n', "chip.toml: schema_version: expected schema_version 1, got 2"),
    # TOML itself
    ('name = "x\n', "not valid TOML: "),
    ('name = "x"\nname = "y"\n', "not valid TOML: "),
    ("[format\nkind = 1\n", "(at line 1, column 8)"),
    ("  \n\t\n", "empty chip spec"),
    ("# only a comment\n", "empty chip spec"),
])
def test_bad_spec_is_one_line_with_the_field_path(text, needle):
    msg = bad(text)
    assert needle in msg, msg


GOOD = 'name = "x"\n'


@pytest.mark.parametrize("text, needle", [
    (GOOD + '[[faults]]\nkind = "bitfilp"\nber = 0.1\n', "faults[0].kind: unknown fault kind 'bitfilp' (did you mean 'bitflip'?)"),
    (GOOD + '[[faults]]\nkind = "bitflip"\nber = 1.5\n', "faults[0].ber: expected a probability in [0, 1], got 1.5"),
    (GOOD + '[[faults]]\nkind = "bitflip"\nber = -0.1\n', "faults[0].ber: expected a probability in [0, 1]"),
    (GOOD + '[[faults]]\nkind = "additive"\nsigma = nan\n', "faults[0].sigma: expected a finite number"),
    (GOOD + '[[faults]]\nkind = "additive"\nsigma = -1\n', "faults[0].sigma: expected a number >= 0"),
    (GOOD + '[[faults]]\nkind = "additive"\nsigma = "abc"\n', "faults[0].sigma: expected a number, got 'abc'"),
    (GOOD + '[[faults]]\nkind = "additive"\n', "faults[0].sigma: required field missing"),
    (GOOD + '[[faults]]\nkind = "additive"\nsigma = 0.1\nsigmma = 2\n', "faults[0].sigmma: unknown field"),
    (GOOD + '[[faults]]\nkind = "stuck"\nsa0 = 0.6\nsa1 = 0.6\n', "faults[0]: expected sa0 + sa1 <= 1"),
    (GOOD + '[format]\nkind = "int32"\n', "format.kind: expected an integer format int2 .. int16"),
    (GOOD + '[format]\nkind = "fp33"\n', "format.kind: unknown number format 'fp33' (did you mean 'fp32'?)"),
    (GOOD + '[format]\nkind = "int8"\nscale = "per-row"\n', "format.scale"),
    (GOOD + '[device]\ntypes = ["convolution"]\n', "device.types: unknown component type 'convolution' (did you mean 'conv'?)"),
    (GOOD + "coverage = 1.0\n", "coverage: expected a probability in (0, 1)"),
    (GOOD + "schema_version = 2\n", "schema_version: expected schema_version 1, got 2"),
    (GOOD + "colour = 3\n", "colour: unknown field"),
    ('description = "no name"\n', "name: required field missing"),
    ('name = "x\n', "not valid TOML"),
    ("  \n", "empty chip spec"),
])
def test_bad_specs_name_the_field(text, needle):
    with pytest.raises(SpecError) as e:
        parse_chip(text, "chip.toml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("chip.toml: ") and needle in msg, msg


def test_misspelt_key_is_reported_before_the_missing_one():
    msg = bad(F + '[[faults]]\nkind = "bitflip"\nbre = 0.1\n')
    assert "faults[0].bre: unknown field for a 'bitflip' fault (did you mean 'ber'?)" in msg
    assert "expected exactly one of ber" in bad(F + '[[faults]]\nkind = "bitflip"\n')


def test_many_errors_are_summarised():
    msg = bad('name = 1\ncoverage = 2\ndescription = 3\nreferences = 4\n[format]\nkind = 5\n')
    assert msg.count("; ") == 2 and msg.endswith("(and 2 more)"), msg


def test_all_floats_reject_non_finite_values():
    fields = {"additive": "sigma", "multiplicative": "sigma", "pcm": "g_max", "read": "sigma", "drift": "t",
              "bitflip": "ber", "stuck": "sa0", "activation-bitflip": "ber", "activation-stuck": "sa1",
              "periphery": "out_noise"}
    assert set(fields) == set(FAULT_KINDS)
    for kind, field in fields.items():
        for v in ("nan", "inf", "-inf"):
            extra = "t = 1\n" if kind == "drift" and field != "t" else ""
            msg = bad(F + f'[[faults]]\nkind = "{kind}"\n{field} = {v}\n{extra}')
            assert f"faults[0].{field}: expected a finite number, got {v}" in msg, msg


# ----------------------------------------------------------------------------- files and names


def test_files(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('name = "mine"\n' + FMT)
    assert load_chip(good).name == "mine" and load_chip(str(good)) == load_chip(good)
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + good.read_bytes())
    assert load_chip(bom).name == "mine"

    cases = [("none.toml", None, "chip file not found: "),
             ("empty.toml", b"", "empty.toml: empty chip spec"),
             ("blank.toml", b"\n  \n", "blank.toml: empty chip spec"),
             ("bin.toml", b"\x00\x01\x02name", "bin.toml: binary file"),
             ("latin1.toml", 'name = "caf\xe9"\n'.encode("latin-1"), "latin1.toml: not UTF-8 text"),
             ("syntax.toml", b'name = "x"\n[format]\nkind = int8\n', "syntax.toml: not valid TOML: "),
             ("field.toml", b'name = "x"\n[format]\nkind = "int8"\n[[faults]]\nkind = "bitflip"\nber = 1.5\n',
              "field.toml: faults[0].ber: expected a probability in [0, 1], got 1.5")]
    for fname, content, needle in cases:
        p = tmp_path / fname
        if content is not None:
            p.write_bytes(content)
        with pytest.raises(SpecError) as e:
            load_chip(p)
        msg = str(e.value)
        assert "\n" not in msg and needle in msg, msg
    with pytest.raises(SpecError, match="line 3, column 8"):
        load_chip(tmp_path / "syntax.toml")
    with pytest.raises(SpecError, match="a directory"):
        load_chip(tmp_path)
    with pytest.raises(SpecError, match="chip file not found: missing/chip"):
        load_chip("missing/chip")


def test_files_and_presets(tmp_path):
    with pytest.raises(SpecError, match="chip file not found"):
        load_chip(tmp_path / "none.toml")
    (tmp_path / "bin.toml").write_bytes(b"\x00\x01\x02name")
    with pytest.raises(SpecError, match="binary file"):
        load_chip(tmp_path / "bin.toml")
    (tmp_path / "empty.toml").write_text("")
    with pytest.raises(SpecError, match="empty chip spec"):
        load_chip(tmp_path / "empty.toml")
    with pytest.raises(SpecError, match="did you mean 'int8-sram-0.5v'"):
        load_chip("int8-sram-05v")


@pytest.mark.parametrize("name, needle", [
    ("int8-sram-05v", "unknown chip preset 'int8-sram-05v' (did you mean 'int8-sram-0.5v'?)"),
    ("pcm-1-day", "(did you mean 'pcm-1day'?)"),
    ("rram4bit", "(did you mean 'rram-4bit'?)"),
    ("zzz", "unknown chip preset 'zzz'"),
])
def test_unknown_preset_suggests(name, needle):
    with pytest.raises(SpecError) as e:
        load_chip(name)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and "path to a .toml file" in msg, msg


def test_preset_name_versus_path(tmp_path, monkeypatch):
    # a .toml suffix or a separator means a path, never a preset
    with pytest.raises(SpecError, match="chip file not found: pcm-1day.toml"):
        load_chip("pcm-1day.toml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pcm-1day.toml").write_text('name = "local"\n' + FMT)
    assert load_chip("pcm-1day.toml").name == "local" and load_chip("pcm-1day").name == "pcm-1day"
    (tmp_path / "mychip").write_text('name = "nosuffix"\n' + FMT)
    assert load_chip("mychip").name == "nosuffix"  # an existing path without the suffix


def test_load_chip_passes_a_spec_through_and_rejects_other_types():
    spec = load_chip("rram-4bit")
    assert load_chip(spec) is spec
    with pytest.raises(SpecError, match="expected a chip preset name or a path"):
        load_chip(3)


def test_describe_chip_numbers():
    text = describe_chip(load_chip("rram-4bit"))
    assert "int4, per-channel scale" in text and "conv, linear layers; weights only" in text
    assert "stuck: sa0 0.0175, sa1 0.0904" in text and "additive: sigma 0.03" in text and "Chen et al. 2015" in text
    text = describe_chip(load_chip("pcm-1day"))
    assert "drift: t 86400 s, t0 20 s" in text and "1 day after programming" in text and "g_max 25 uS" in text
    assert math.isclose(load_chip("pcm-1day").coverage, 0.999) and "0.999" in text


# ----------------------------------------------------------------------------- the command line


def test_chips_cli(tmp_path, capsys):
    assert main(["chips", "list", "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out) == list_chips()
    assert main(["chips", "show", "rram-4bit"]) == 0
    assert "stuck: sa0 0.0175" in capsys.readouterr().out
    p = tmp_path / "mine.toml"
    assert main(["chips", "show", "int8-sram-0.5v", "--toml"]) == 0
    p.write_text(capsys.readouterr().out.replace('name = "int8-sram-0.5v"', 'name = "mine"'))
    assert main(["chips", "check", str(p)]) == 0
    assert capsys.readouterr().out.startswith("ok: mine")
    bad = tmp_path / "bad.toml"
    bad.write_text(p.read_text().replace("ber = 0.0156", "ber = 2.0"))
    assert main(["chips", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "faults[0].ber" in err
    assert main(["estimate", "-m", "digits-cnn", "--chip", str(bad)]) == 2


# ----------------------------------------------------------------------------- the fault registry

# one valid [[faults]] body per kind (a new kind adds its line here, with its own tests)
EXAMPLES = {"additive": "sigma = 0.1", "multiplicative": "sigma = 0.05", "pcm": "g_max = 20.0",
            "read": 'sigma = 0.02\nrelative_to = "weight"', "drift": "t = 3600\nnu_mean = 0.05", "bitflip": "count = 3",
            "stuck": 'sa1 = 0.01\ngranularity = "bit"', "activation-bitflip": 'ber = 1e-6\ntypes = ["conv"]',
            "activation-stuck": "sa0 = 0.001", "periphery": 'out_noise = 0.04\nbound_management = "none"'}


def _all_kinds_spec():
    return parse_chip(OK + "".join(f'[[faults]]\nkind = "{k}"\n{EXAMPLES[k]}\n' for k in registry.names()) + FMT)


def test_every_registered_kind_has_a_schema_a_model_and_a_summary_line():
    assert set(EXAMPLES) == set(registry.names()), "a new fault kind: add an example entry to EXAMPLES"
    spec = _all_kinds_spec()
    for k, cfg in zip(registry.kinds(), spec.faults):
        assert issubclass(k.config, FaultConfig) and typing.get_args(k.config.model_fields["kind"].annotation) == (k.kind,)
        assert issubclass(k.model, FaultModel) and k.model.kind == k.kind
        assert k.module.startswith("hwfault.faults.")  # declared by a module of the package, found by discovery
        assert type(cfg) is k.config and cfg.kind == k.kind
        line = k.summary(cfg)
        assert isinstance(line, str) and line.strip() and "\n" not in line
        model = registry.build_fault(cfg)
        assert type(model) is k.model and model.describe()["kind"] == k.kind
        assert registry.build_fault(cfg.model_dump()) == model  # a mapping builds the same model
        assert type(model.scaled(2.0)) is k.model and isinstance(model.severity_name, str)
        assert isinstance(model.severity, (int, float))
    with pytest.raises(SpecError, match="unknown fault kind 'bitfilp' \\(did you mean 'bitflip'\\?\\)"):
        registry.build_fault({"kind": "bitfilp", "ber": 0.1})


def test_the_spec_union_fault_kinds_and_glossary_are_exactly_the_registry():
    names = registry.names()
    assert FAULT_KINDS == names and tuple(faults_pkg.FAULT_KINDS) == names
    assert faults_pkg.FAULT_KINDS == {k.kind: k.model for k in registry.kinds()}
    fault = typing.get_args(ChipSpec.model_fields["faults"].annotation)[0]  # list[Fault] -> Annotated[Union, Field]
    assert typing.get_args(typing.get_args(fault)[0]) == tuple(k.config for k in registry.kinds())
    spec = _all_kinds_spec()
    text = describe_chip(spec)
    for i, f in enumerate(spec.faults, 1):  # each line's plain words are its kind's registered summary
        assert f"    {i}. {f.kind}: " in text and f"({registry.get(f.kind).summary(f)})" in text
    assert "g_max 20 uS" in text and "t 3600 s, t0 20 s" in text  # the units of the kinds' configs
    assert f"(choose from: {', '.join(names)})" in bad(F + '[[faults]]\nber = 0.1\n')
    import hwfault.spec.summary as summary

    assert not [n for n in vars(summary) if "GLOSS" in n.upper()]  # no second list of kinds


def test_register_checks_the_kind_and_builds_by_field_name():
    from dataclasses import dataclass
    from typing import Literal

    from hwfault.faults.config import NonNeg

    class ToyFault(FaultConfig):
        kind: Literal["toy_in_process"]
        delta: NonNeg = 0.1
        note: str = ""  # config only: not passed to the model

    @dataclass(frozen=True)
    class Toy(FaultModel):
        delta: float
        kind = "toy_in_process"

    try:
        entry = registry.register(kind="toy_in_process", config=ToyFault, model=Toy, summary="a toy")
        assert registry.names()[-1] == "toy_in_process"  # no order given: after the built-in kinds
        assert entry.summary(ToyFault(kind="toy_in_process")) == "a toy"
        assert registry.build_fault(ToyFault(kind="toy_in_process", delta=0.5, note="x")) == Toy(0.5)
        assert registry.build_fault({"kind": "toy_in_process"}) == Toy(0.1)
    finally:
        registry._REGISTRY.pop("toy_in_process", None)
    assert "toy_in_process" not in registry.names()
    with pytest.raises(TypeError, match="needs the field kind: Literal\\['other'\\]"):
        registry.register(kind="other", config=ToyFault, model=Toy, summary="")

    class Needy(FaultConfig):
        kind: Literal["needy"]

    @dataclass(frozen=True)
    class NeedyModel(FaultModel):
        level: float
        kind = "needy"

    with pytest.raises(TypeError, match="NeedyModel needs level, which Needy lacks"):
        registry.register(kind="needy", config=Needy, model=NeedyModel, summary="")

    class Again(FaultConfig):
        kind: Literal["additive"]
        sigma: NonNeg

    with pytest.raises(ValueError, match="fault kind 'additive' registered twice: by hwfault.faults.analog"):
        registry.register(kind="additive", config=Again, model=registry.get("additive").model, summary="")
    assert registry.get("additive").module == "hwfault.faults.analog"


TOY_MODULE = '''\
"""A toy fault kind: every stored weight shifted by delta * max|w| of its tensor."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..constraints import Box
from .base import FaultModel
from .config import FaultConfig, NonNeg, num
from .registry import register


class ToyFault(FaultConfig):
    """A constant offset of delta * max|w| (units: max|w| of the tensor)."""

    units = {"delta": "x max|w|"}

    kind: Literal["toy"]
    delta: NonNeg = 0.1


@dataclass(frozen=True)
class Toy(FaultModel):
    delta: float = 0.1
    kind = "toy"
    severity_name = "delta"

    def sample(self, view, values, gen):
        return values + self.delta * view.tmax.double()

    def constraint(self, view, coverage):
        d = self.delta * view.tmax.double()
        return Box(d, d)

    def scaled(self, factor):
        return replace(self, delta=self.delta * factor)

    @property
    def severity(self):
        return self.delta

    def describe(self):
        return {"kind": self.kind, "delta": self.delta}


register(kind="toy", config=ToyFault, model=Toy,
         summary=lambda f: f"every weight shifted by {num(f.delta)} x max|w|")
'''

TOY_CHECK = '''\
import sys
import torch
from torch import nn
import hwfault
assert hwfault.__file__.startswith(sys.argv[1]), hwfault.__file__
from hwfault.errors import SpecError
from hwfault.faults import FAULT_KINDS as MODELS, Chip
from hwfault.spec import FAULT_KINDS, describe_chip, parse_chip

assert FAULT_KINDS[-1] == "toy" and MODELS["toy"].__name__ == "Toy", FAULT_KINDS
text = 'name = "t"\\n[format]\\nkind = "fp32"\\n[[faults]]\\nkind = "toy"\\ndelta = 0.5\\n'
spec = parse_chip(text)
assert parse_chip(spec.to_toml()) == spec and spec.to_dict()["faults"] == [{"source": "", "kind": "toy", "delta": 0.5}]
assert "1. toy: delta 0.5 x max|w| (every weight shifted by 0.5 x max|w|)" in describe_chip(spec), describe_chip(spec)
for body, needle in [("delta = -1", "faults[0].delta: expected a number >= 0, got -1"),
                     ("dleta = 1", "faults[0].dleta: unknown field for a 'toy' fault (did you mean 'delta'?)")]:
    try:
        parse_chip(text.replace("delta = 0.5", body), "chip.toml")
        raise AssertionError(body)
    except SpecError as e:
        assert needle in str(e), str(e)
try:
    parse_chip(text.replace('"toy"', '"toi"'), "chip.toml")
    raise AssertionError("toi")
except SpecError as e:
    assert "faults[0].kind: unknown fault kind 'toi' (did you mean 'toy'?)" in str(e), str(e)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 3))
chip = Chip.build(spec, model)
w = model[0].weight.detach().double().reshape(-1)
assert torch.allclose(chip.program(torch.Generator().manual_seed(0)), w + 0.5 * w.abs().max())
assert chip.describe()["faults"] == [{"kind": "toy", "delta": 0.5}]
assert chip.constraint().names == ("toy",) and chip.faults[0].scaled(2.0).delta == 1.0
print("ok")
'''


def test_a_new_kind_is_one_new_file_in_faults(tmp_path):
    """Copy the package, add hwfault/faults/toy.py and nothing else: the kind is in the spec schema,
    the error messages, the summary and Chip.build."""
    root = tmp_path / "site"
    shutil.copytree(Path(hwfault.__file__).parent, root / "hwfault", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "hwfault" / "faults" / "toy.py").write_text(TOY_MODULE)
    env = dict(os.environ, PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, "-c", TOY_CHECK, str(root)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
