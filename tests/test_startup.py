"""Start-up like a library: ``hwfault --help`` and ``hwfault chips ...`` import no torch, scipy, numpy,
dask, onnx or brevitas (reading and checking a chip spec needs only pydantic). Each case runs in a
fresh interpreter and lists the heavy modules it found in ``sys.modules``; nothing here is timed
(the machines are noisy), the imports are what make a command slow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hwfault.spec import CHIPS_DIR

HEAVY = ("torch", "scipy", "numpy", "pandas", "sklearn", "matplotlib", "pyarrow", "dask", "distributed", "onnx",
         "onnxruntime", "onnxscript", "brevitas")

RUN = """\
import json, sys
from hwfault.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("\\nSTARTUP " + json.dumps({{"code": code, "heavy": heavy}}))
"""

IMPORT = """\
import json, sys
{stmt}
print("STARTUP " + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _last(stdout: str) -> dict | list:
    line = [ln for ln in stdout.splitlines() if ln.startswith("STARTUP ")][-1]
    return json.loads(line[len("STARTUP "):])


def _cli(*args: str, cwd=None) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", RUN.format(heavy=HEAVY), *args], capture_output=True, text=True,
                       timeout=120, cwd=cwd)
    assert "STARTUP " in r.stdout, r.stdout + r.stderr
    return _last(r.stdout), r.stdout + r.stderr


@pytest.mark.parametrize("args", [
    ["--help"],
    ["chips", "--help"],
    ["chips", "list"],
    ["chips", "list", "--json"],
    ["chips", "show", "pcm-1day"],
    ["chips", "show", "rram-4bit", "--toml"],
    ["chips", "check", "int8-sram-nominal"],
    ["chips", "check", str(CHIPS_DIR / "pcm-1day.toml")],
], ids=" ".join)
def test_help_and_chips_commands_import_nothing_heavy(args):
    got, out = _cli(*args)
    assert got == {"code": 0, "heavy": []}, out


def test_a_bad_chip_file_is_reported_without_heavy_imports(tmp_path):
    bad = tmp_path / "chip.toml"
    bad.write_text('name = "x"\n[format]\nkind = "int8"\n[[faults]]\nkind = "bitfilp"\nber = 0.1\n')
    got, out = _cli("chips", "check", str(bad))
    assert got == {"code": 2, "heavy": []}, out
    assert "faults[0].kind: unknown fault kind 'bitfilp' (did you mean 'bitflip'?)" in out


@pytest.mark.parametrize("stmt", [
    "import hwfault, hwfault.cli",
    ("from hwfault.spec import ChipSpec, describe_chip, load_chip, parse_chip; "
     "[describe_chip(load_chip(n)) for n in __import__('hwfault').list_chips()]"),
    "import hwfault.faults.analog, hwfault.faults.bitflip, hwfault.faults.drift, hwfault.faults.stuck",
    "from hwfault.faults import registry; [k.summary for k in registry.kinds()]",
])
def test_the_spec_side_imports_nothing_heavy(stmt):
    r = subprocess.run([sys.executable, "-c", IMPORT.format(stmt=stmt, heavy=HEAVY)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _last(r.stdout) == [], stmt


def test_building_a_chip_imports_the_models_on_first_use():
    """The other side of the split: the fault models load when a chip is built, by their old names too."""
    import hwfault.faults as faults
    import hwfault.faults.analog as analog
    from hwfault.faults import registry
    from hwfault.faults.models.analog import Additive

    assert faults.Additive is Additive and analog.Additive is Additive
    assert registry.get("additive").model is Additive and registry.get("additive").model_ref == \
        ".models.analog:Additive"
    with pytest.raises(AttributeError, match="module 'hwfault.faults.analog' has no attribute 'Nope'"):
        analog.Nope  # noqa: B018
    with pytest.raises(AttributeError):
        analog.__wrapped__  # noqa: B018


def test_a_kind_may_name_its_model_as_a_string():
    """``register(model="module:Class")`` is checked when the model is first used, like a class is at once."""
    from typing import Literal

    from hwfault.faults import registry
    from hwfault.faults.config import FaultConfig, NonNeg

    class LazyFault(FaultConfig):
        kind: Literal["lazy_in_process"]
        sigma: NonNeg = 0.1

    with pytest.raises(ValueError, match="model must be a class or 'module:Class', got 'nope'"):
        registry.register(kind="lazy_in_process", config=LazyFault, model="nope", summary="")
    try:
        entry = registry.register(kind="lazy_in_process", config=LazyFault, model="hwfault.faults.models.analog:Additive",
                                  summary="lazy")
        assert "lazy_in_process" in registry.names() and entry.summary(LazyFault(kind="lazy_in_process")) == "lazy"
        with pytest.raises(TypeError, match="fault kind 'lazy_in_process': Additive.kind is 'additive'"):
            registry.build_fault({"kind": "lazy_in_process"})  # the wrong model shows up at the first build
    finally:
        registry._REGISTRY.pop("lazy_in_process", None)


def test_formats_and_params_use_the_shared_names():
    from hwfault import formats, params, vocab

    assert params.COMPONENT_TYPES is vocab.COMPONENT_TYPES and params.TAGS is vocab.TAGS
    assert tuple(formats._FLOATS) == vocab.FLOAT_FORMATS and formats.FORMATS is vocab.FORMATS
