"""--device / device=: the resolver on simulated machines, one-line errors before any work, and on the
CPU results identical to no device at all (the default). The GPU itself is checked by bench/gpu_check.py."""

import json
import subprocess
import sys

import pytest
import torch

import hwfault as hw
import hwfault.analyses.campaign.run as campaign_run
import hwfault.devices as devices
import hwfault.zoo  # noqa: F401  (the package is lazy)
from hwfault.cli import main
from hwfault.devices import device_of, resolve_device, to_device, worker_device
from hwfault.errors import HwfaultError, ModelError

pytestmark = pytest.mark.usefixtures("one_thread")


def _machine(monkeypatch, cuda: int = 0, mps: bool = False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


# ----------------------------------------------------------------------------- the resolver


def test_cpu_and_none_are_the_cpu():
    assert resolve_device(None) == resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("cuda, mps, want", [(0, False, "cpu"), (0, True, "mps"), (2, True, "cuda"), (1, False, "cuda")])
def test_auto_takes_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want):
    _machine(monkeypatch, cuda, mps)
    assert resolve_device("auto").type == want


def test_cuda_indices(monkeypatch):
    _machine(monkeypatch, cuda=2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(HwfaultError, match=r"^--device cuda:2: this machine has 2 CUDA devices \(cuda:0..cuda:1\)$"):
        resolve_device("cuda:2")
    _machine(monkeypatch, cuda=1)
    with pytest.raises(HwfaultError, match=r"^--device cuda:7: this machine has 1 CUDA device \(cuda:0\)$"):
        resolve_device("cuda:7")


@pytest.mark.parametrize("value, message", [
    ("cuda", "--device cuda: no CUDA device is available (torch.cuda.is_available() is False)"),
    ("cuda:0", "--device cuda:0: no CUDA device is available (torch.cuda.is_available() is False)"),
    ("mps", "--device mps: no MPS device is available (torch.backends.mps.is_available() is False)"),
    ("tpu", "--device tpu: unknown device; choose from auto, cpu, cuda, cuda:N, mps"),
    ("cuda:x", "--device cuda:x: unknown device; choose from auto, cpu, cuda, cuda:N, mps"),
])
def test_unavailable_or_unknown_is_one_line(monkeypatch, value, message):
    _machine(monkeypatch, cuda=0, mps=False)
    with pytest.raises(HwfaultError) as e:
        resolve_device(value)
    assert str(e.value) == message


def test_a_non_string_is_refused():
    with pytest.raises(HwfaultError, match="expected one of auto, cpu, cuda, cuda:N, mps, got int"):
        resolve_device(0)


def test_one_gpu_per_dask_worker(monkeypatch):
    import distributed

    _machine(monkeypatch, cuda=2)
    assert worker_device("cuda") == torch.device("cuda")  # not in a worker: the current GPU
    for name, want in ((0, 0), (3, 1), ("tcp://a:1", 0)):
        monkeypatch.setattr(distributed, "get_worker", lambda name=name: type("W", (), {"name": name})())
        assert worker_device("cuda") == torch.device("cuda", want)
        assert worker_device("auto") == torch.device("cuda", want)
    assert worker_device("cuda:1") == torch.device("cuda", 1)  # an explicit index is kept
    _machine(monkeypatch, cuda=0)
    assert worker_device("auto") == torch.device("cpu")


def test_to_device_cpu_leaves_a_cpu_model_as_it_is(cnn):
    ids = [id(p) for p in cnn.parameters()]
    ptrs = [p.data_ptr() for p in cnn.parameters()]
    assert to_device(cnn, "cpu") is cnn and to_device(cnn, None) is cnn
    assert [id(p) for p in cnn.parameters()] == ids and [p.data_ptr() for p in cnn.parameters()] == ptrs
    assert device_of(cnn) == torch.device("cpu") and device_of(torch.nn.ReLU()) == torch.device("cpu")


def test_devices_imports_no_torch_at_import_time():
    code = "import sys, hwfault.cli, hwfault.devices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------- the command line


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("device, message", [
    ("cuda", "error: --device cuda: no CUDA device is available (torch.cuda.is_available() is False)"),
    ("cuda:3", "error: --device cuda:3: this machine has 1 CUDA device (cuda:0)"),
    ("tpu", "error: --device tpu: unknown device; choose from auto, cpu, cuda, cuda:N, mps"),
])
@pytest.mark.parametrize("command", [
    ["sweep", "--model", "digits-cnn", "--eps", "0.1"],
    ["campaign", "--model", "digits-cnn", "--chip", "fp32-single-bitflip", "--trials", "5"],
    ["certify", "--model", "digits-cnn", "--norm", "inf", "--eps", "0.001"],
    ["harden", "--model", "digits-cnn", "--method", "crt", "--out", "never.safetensors"],
])
def test_cli_device_errors_are_one_line_exit_2(monkeypatch, capsys, tmp_path, command, device, message):
    _machine(monkeypatch, cuda=0 if device == "cuda" else 1)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, *command, "--device", device)
    assert code == 2 and out == ""
    assert err.strip() == message
    assert list(tmp_path.iterdir()) == []  # checked before any work: nothing written


def test_cli_device_error_has_no_traceback():
    r = subprocess.run([sys.executable, "-c", "from hwfault.cli import main; main()", "sweep", "--model", "digits-cnn",
                        "--device", "cuda", "--eps", "0.1"], capture_output=True, text=True)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --device cuda: no CUDA device is available (torch.cuda.is_available() is False)"]


def test_every_model_command_takes_device():
    from typer.main import get_command

    from hwfault.cli import app

    cmd = get_command(app)
    for name in ("sweep", "probe", "estimate", "bits", "campaign", "harden", "export", "certify"):
        opts = {o for p in cmd.commands[name].params for o in p.opts}
        assert "--device" in opts, name


def _strip(d):
    """A result without its timings (and the campaign's cache budget, sized from this process's memory)."""
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items()
                if k not in ("seconds", "trials_per_second", "duration", "seconds_by_part", "clean_evaluation_seconds",
                             "budget_mb", "kept_mb", "kept_values")}
    if isinstance(d, list):
        return [_strip(v) for v in d]
    return d


def test_cli_device_cpu_sweep_is_identical_to_no_flag(capsys, tmp_path):
    outs = []
    for extra in ([], ["--device", "cpu"]):
        js = tmp_path / f"s{len(extra)}.json"
        code, _, err = _run(capsys, "sweep", "--model", "digits-cnn", "--eps", "0.1,1", "--trials", "2",
                            "--steps", "2", "--json", str(js), *extra)
        assert code == 0, err
        outs.append(_strip(json.loads(js.read_text())))
    assert outs[0] == outs[1]


def test_cli_device_cpu_campaign_is_identical_to_no_flag(capsys, tmp_path):
    outs = []
    for extra in ([], ["--device", "cpu"], ["--device", "auto"] if not torch.cuda.is_available() else []):
        js = tmp_path / f"c{len(outs)}.json"
        code, _, err = _run(capsys, "campaign", "--model", "digits-cnn", "--chip", "fp32-single-bitflip",
                            "--trials", "12", "--json", str(js), *extra)
        assert code == 0, err
        outs.append(_strip(json.loads(js.read_text())))
    assert outs[0] == outs[1] == outs[2]


def test_certify_says_it_runs_on_the_cpu(monkeypatch, capsys):
    from hwfault import cliargs

    cliargs._cpu_only("cpu", "certify")
    assert capsys.readouterr().err == ""
    cliargs._cpu_only("cuda", "certify (float64 bound propagation)")
    assert capsys.readouterr().err == "note: certify (float64 bound propagation) runs on the CPU; --device cuda is not used\n"


# ----------------------------------------------------------------------------- the Python API


def test_api_device_cpu_sweep_and_estimate(digits):
    kw = dict(epsilons=[0.1], methods="random,gradient", trials=2)
    a, b = hw.sweep("digits-cnn", digits, **kw), hw.sweep("digits-cnn", digits, device="cpu", **kw)
    assert _strip(a.to_dict()) == _strip(b.to_dict())
    e = hw.estimate("digits-cnn", digits, "fp32-single-bitflip", trials=3, steps=2, per_fault=False, severities=(),
                    certified=None, device="cpu")
    assert e.random.to_dict()["trials"] == 3
    with pytest.raises(HwfaultError, match="unknown device"):
        hw.sweep("digits-cnn", digits, device="gpu", **kw)


def test_api_device_on_a_module_keeps_it_in_place(cnn, digits, snapshot):
    take, same = snapshot
    before = take(cnn)
    r = hw.bits(cnn, digits, max_flips=3, random_runs=1, device="cpu")
    assert r.to_dict()["max_flips"] == 3 and same(cnn, before) and device_of(cnn).type == "cpu"


def test_api_campaign_rows_identical_on_cpu(digits):
    kw = dict(trials=16, seed=3)
    rows = []
    for dev in (None, "cpu"):
        res = hw.campaign("digits-cnn", "digits", "fp32-single-bitflip", device=dev, **kw)
        rows.append([{k: v for k, v in r.items() if k != "duration"} for r in res.rows])
    assert rows[0] == rows[1] and all(r["faults"] for r in rows[0])
    plan, est = hw.plan_campaign("digits-cnn", "digits", "fp32-single-bitflip", trials=4, device="cpu")
    assert plan.planned_trials == 4 and est["measured_trials"] >= 1


def test_recipe_identity_ignores_the_device():
    base = campaign_run.Recipe("digits-cnn", "digits", {"name": "x"}, 0)
    on_gpu = campaign_run.Recipe("digits-cnn", "digits", {"name": "x"}, 0, device="cuda")
    assert base.identity() == on_gpu.identity() and base.key == on_gpu.key


def test_onnx_model_without_a_cuda_provider(cnn, digits, tmp_path):
    import onnxruntime as ort

    from hwfault.export import export_onnx
    from hwfault.onnxmodel import load_onnx

    export_onnx(cnn, tmp_path / "m.onnx", data=digits)
    m = load_onnx(tmp_path / "m.onnx")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(ModelError) as e:
        m.use_device(torch.device("cuda"))
    assert "CUDAExecutionProvider is not installed" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError, match="no mps provider"):
        m.use_device(torch.device("mps"))
    before = hw.evaluate(m, digits).accuracy
    m.use_device(torch.device("cuda"), strict=False)  # auto: stays on the CPU provider
    m.use_device(torch.device("cpu"))
    assert hw.evaluate(m, digits).accuracy == before


def test_resolver_constants():
    assert devices.CHOICES == ("auto", "cpu", "cuda", "cuda:N", "mps")
