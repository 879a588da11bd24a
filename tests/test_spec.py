"""Chip specs: every preset loads and round-trips; every bad spec or file is one SpecError line naming the field."""

import math

import pytest
from pydantic import ValidationError

from hwfault.errors import SpecError
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
    assert [f.kind for f in spec.faults] == list(FAULT_KINDS)
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
    (F + '[[faults]]\nkind = "noise"\n', "faults[0].kind: unknown fault kind 'noise' (choose from: additive, bitflip"),
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
    (OK + '[format]\nkind = "int8"\nscale = "per-row"\n', "format.scale: expected 'per-tensor' or 'per-channel', got 'per-row'"),
    (OK + '[format]\nkind = "fp16"\nscale = "per-channel"\n', "format.scale: expected 'per-tensor' for the float format 'fp16'"),
    (OK + '[format]\nkind = "int8"\nbits = 8\n', "format.bits: unknown field"),
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


def test_misspelt_key_is_reported_before_the_missing_one():
    msg = bad(F + '[[faults]]\nkind = "bitflip"\nbre = 0.1\n')
    assert "faults[0].bre: unknown field for a 'bitflip' fault (did you mean 'ber'?)" in msg
    assert "expected exactly one of ber" in bad(F + '[[faults]]\nkind = "bitflip"\n')


def test_many_errors_are_summarised():
    msg = bad('name = 1\ncoverage = 2\ndescription = 3\nreferences = 4\n[format]\nkind = 5\n')
    assert msg.count("; ") == 2 and msg.endswith("(and 2 more)"), msg


def test_all_floats_reject_non_finite_values():
    fields = {"additive": "sigma", "multiplicative": "sigma", "pcm": "g_max", "read": "sigma", "drift": "t",
              "bitflip": "ber", "stuck": "sa0"}
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
