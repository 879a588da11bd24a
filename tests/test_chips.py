"""Chip specs: presets load and round-trip; every bad spec gets one line naming the field."""

import pytest

from hwfault.cli import main
from hwfault.errors import SpecError
from hwfault.spec import SCHEMA_VERSION, list_chips, load_chip, parse_chip


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
