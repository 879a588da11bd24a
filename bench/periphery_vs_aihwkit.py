"""hwfault's ``periphery`` fault against IBM aihwkit's own analog forward pass, on one Linear layer.

The same layer (random weights W, bias b, fixed inputs X) runs through aihwkit's ``AnalogLinear``
with an ``InferenceRPUConfig`` (its C++ CPU tile: ``ForwardBackwardPassIOManaged``; perfect weights:
no programming, drift or read noise, no weight modifier) and through ``torch.nn.Linear`` with
hwfault's periphery fault installed, with the same IO parameters, ``--draws`` forward calls each.
The output error e = y - (W x + b) is compared per output element and input: its mean over the draws
(the deterministic part: DAC/ADC rounding, saturation, IR drop) and its standard deviation (the output
noise through the ADC). Agreement: the pooled std ratio within 3% and the mean difference at the
level of its own sampling noise (chi2 per element, ~1 when they agree, < 1.3 accepted); with the noise
off, the outputs are compared value by value.

Cases: aihwkit's IOParameters defaults (weights as they are, omega 0); the same with
weight_scaling_omega = 1 (hwfault's aihwkit-inference preset); inputs that saturate the ADC, with and
without iterative bound management; IR drop 1; 1100 inputs on three tiles; and noise off.

When aihwkit cannot be imported (no wheel for this platform and torch, or its build failed) the JSON
says so and the cases compare against the independent numpy implementation of the equations in
tests/test_periphery.py instead. aihwkit 1.2.0 ships only a source distribution for Linux x86-64 and
CPython 3.11; it builds against torch 2.13.0+cpu (OpenBLAS, cmake, mypy's stubgen) in a throw-away
venv that sees this project's torch through a ``.pth`` file:

    python -m venv /tmp/aih && echo $PWD/.venv/lib/python3.11/site-packages > /tmp/aih/lib/python3.11/site-packages/main.pth
    /tmp/aih/bin/pip install setuptools wheel scikit-build pybind11 ninja cmake mypy
    PATH=/tmp/aih/bin:$PATH USE_CUDA=OFF /tmp/aih/bin/pip install --no-build-isolation --no-deps aihwkit==1.2.0
    PYTHONPATH=. /tmp/aih/bin/python bench/periphery_vs_aihwkit.py [--draws 1000]

Writes bench/results/periphery_vs_aihwkit.json and prints the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hwfault.faults.models.activation import ActivationFormat, installed  # noqa: E402
from hwfault.faults.models.periphery import Periphery  # noqa: E402

DEFAULTS = dict(inp_res=1 / 126, out_res=1 / 510, out_noise=0.06, out_bound=12.0)


def cases():
    """(name, hwfault Periphery fields, inputs kind, in_features)."""
    return [
        ("aihwkit defaults (omega 0)", dict(DEFAULTS), "normal", 256),
        ("preset: defaults, omega 1", dict(DEFAULTS, weight_scaling_omega=1.0), "normal", 256),
        ("saturating, bound management", dict(DEFAULTS, weight_scaling_omega=1.0), "saturating", 256),
        ("saturating, no bound management", dict(DEFAULTS, weight_scaling_omega=1.0, bound_management="none"),
         "saturating", 256),
        ("IR drop 1, omega 1", dict(DEFAULTS, weight_scaling_omega=1.0, ir_drop=1.0), "positive", 256),
        ("1100 inputs: 3 tiles", dict(DEFAULTS, weight_scaling_omega=1.0), "normal", 1100),
        ("noise off (value by value)", dict(DEFAULTS, out_noise=0.0, weight_scaling_omega=1.0), "saturating", 256),
    ]


#: hwfault with one thing wrong against aihwkit's right one: each must fail the agreement test
CONTROLS = [("control: out_noise 20% high", 1, dict(out_noise=0.072)),
            ("control: no DAC (inp_res 0)", 1, dict(inp_res=0.0)),
            ("control: no bound management", 2, dict(bound_management="none")),
            ("control: no IR drop", 4, dict(ir_drop=0.0))]


def problem(kind: str, n: int, m: int, rows: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(m, n, generator=g) * 2 - 1) / n ** 0.5
    b = torch.randn(m, generator=g) * 0.1
    if kind == "normal":
        x = torch.randn(rows, n, generator=g)
    elif kind == "positive":  # all currents one way: the IR drop at its largest
        w = w.abs()
        x = torch.rand(rows, n, generator=g)
    else:  # correlated inputs and weights: outputs of 5-25 normalised units, most beyond the bound of 12
        w = w + 0.1 / n ** 0.5
        x = torch.rand(rows, n, generator=g) + 0.2
    return w, b, x


def aihwkit_layer(fields: dict, w, b):
    from aihwkit.inference import PCMLikeNoiseModel
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.configs import InferenceRPUConfig
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType
    from aihwkit.simulator.parameters.io import IOParameters

    io = IOParameters(
        inp_res=fields["inp_res"], out_res=fields["out_res"], out_noise=fields["out_noise"],
        out_bound=fields["out_bound"], ir_drop=fields.get("ir_drop", 0.0),
        bound_management=BoundManagementType.NONE if fields.get("bound_management") == "none"
        else BoundManagementType.ITERATIVE,
        noise_management=NoiseManagementType.ABS_MAX)
    rc = InferenceRPUConfig(forward=io)
    rc.noise_model = PCMLikeNoiseModel(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0)
    rc.drift_compensation = None
    rc.mapping.weight_scaling_omega = fields.get("weight_scaling_omega", 0.0)
    rc.mapping.max_input_size, rc.mapping.max_output_size = 512, 512
    layer = AnalogLinear(w.shape[1], w.shape[0], bias=True, rpu_config=rc)
    layer.set_weights(w, b)
    return layer.eval()


def draws_aihwkit(fields, w, b, x, draws):
    layer = aihwkit_layer(fields, w, b)
    with torch.no_grad():
        return np.stack([layer(x).numpy() for _ in range(draws)])


def draws_hwfault(fields, w, b, x, draws, seed=1):
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad(), installed([Periphery(**fields)], lin, ActivationFormat(), gen):
        return np.stack([lin(x).numpy() for _ in range(draws)])


def draws_numpy(fields, w, b, x, draws):
    spec = importlib.util.spec_from_file_location("_ref", HERE.parent / "tests" / "test_periphery.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    rng = np.random.default_rng(2)
    p = Periphery(**fields)
    return np.stack([ref.ref_linear(p, x.numpy(), w.numpy(), rng, bias=b.numpy()) for _ in range(draws)])


def stats(outs: np.ndarray, ideal: np.ndarray) -> dict:
    """The error's mean and std over the draws per element, and pooled: its mean, std (the noise:
    sqrt of the mean variance), deterministic part (the RMS over the elements of their mean error,
    less the sampling noise of those means: sqrt(mean(mu^2) - mean(sd^2) / draws)) and RMS."""
    err = outs - ideal[None]
    mean = err.mean(0)
    sd = err.std(0, ddof=1) if len(err) > 1 else np.zeros_like(err[0])
    det2 = float((mean.astype(np.float64) ** 2).mean() - (sd.astype(np.float64) ** 2).mean() / len(err))
    return {"mean": mean, "sd": sd, "draws": len(err), "error_mean": float(err.mean()),
            "error_std": float(np.sqrt((sd.astype(np.float64) ** 2).mean())), "error_det": float(np.sqrt(max(det2, 0.0))),
            "error_rms": float(np.sqrt((err.astype(np.float64) ** 2).mean()))}


def compare(ours: dict, peer: dict, scale: np.ndarray, fields: dict) -> dict:
    """Noise on: the pooled std ratio and the chi2 per element of the mean difference (about 1 when
    the means agree up to their sampling noise). Noise off: value by value; a difference is one ADC
    step at some bound-management round (a float32 sum in another order on a rounding boundary),
    counted in ADC steps read back at r = 1 (d_out x ``scale``, the abs-max of the input times the
    mapping scale). The standard error of a mean is at least that of the nominal noise (out_noise x
    ``scale``): an output saturated in all but a few draws has a sample std near 0 that says nothing."""
    if ours["draws"] == 1:
        d = np.abs(ours["mean"] - peer["mean"])
        k = d / (Periphery(**fields).steps[1] * scale)
        steps = np.unique(np.round(k[d > 0], 3)).tolist()
        return {"equal_fraction": float((d == 0).mean()), "max_abs_diff": float(d.max()), "diff_in_adc_steps": steps,
                "agree": bool((d == 0).mean() >= 0.999 and all(st in (1, 2, 4, 8, 16, 32) for st in steps))}
    ratio = float(np.sqrt((ours["sd"] ** 2).mean() / (peer["sd"] ** 2).mean()))
    se2 = ours["sd"] ** 2 / ours["draws"] + peer["sd"] ** 2 / peer["draws"]
    floor = (fields["out_noise"] * scale) ** 2 * (1 / ours["draws"] + 1 / peer["draws"])
    chi2 = float(((ours["mean"] - peer["mean"]) ** 2 / np.maximum(se2, floor)).mean())
    return {"std_ratio": ratio, "mean_chi2": chi2, "agree": bool(0.97 < ratio < 1.03 and chi2 < 1.3)}


def read_scale(fields: dict, w, x) -> np.ndarray:
    """Per input row: what one normalised output unit reads back as at r = 1 (abs-max x mapping scale;
    the mapping scale of the largest tile, exact for one tile)."""
    a = float(w.abs().max()) / fields["weight_scaling_omega"] if fields.get("weight_scaling_omega") else 1.0
    return (a * x.abs().amax(1)).numpy()[:, None]


def _pooled(st: dict) -> dict:
    return {k: v for k, v in st.items() if k not in ("mean", "sd")}


def aihwkit_status() -> dict:
    try:
        import aihwkit
        from aihwkit.simulator import rpu_base  # noqa: F401  (the C++ tiles)
    except Exception as e:  # noqa: BLE001  (any failure to import is the answer)
        return {"installed": False, "why": f"{type(e).__name__}: {e}".splitlines()[0]}
    return {"installed": True, "version": aihwkit.__version__, "tile": "InferenceTile (C++ CPU, RPUCuda)",
            "how": "aihwkit 1.2.0 has no wheel for linux x86-64 / CPython 3.11 on PyPI (sdist only); built from it "
                   "against torch " + torch.__version__ + " with OpenBLAS in a throw-away venv (see the docstring)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=32, help="input vectors per forward call")
    ap.add_argument("--numpy-draws", type=int, default=300,
                    help="draws of the tests' numpy reference, also compared with aihwkit (0: skip)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "periphery_vs_aihwkit.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    status = aihwkit_status()
    peer_name = "aihwkit" if status["installed"] else "numpy reference (tests/test_periphery.py)"
    peer_draws = draws_aihwkit if status["installed"] else draws_numpy
    if not status["installed"]:
        print(f"aihwkit not importable ({status['why']}): comparing against the equations", file=sys.stderr)
    m = 128
    rows = []
    t0 = time.perf_counter()
    for name, fields, kind, n in cases():
        w, b, x = problem(kind, n, m, args.rows)
        ideal = (x @ w.T + b).numpy()
        d = args.draws if fields["out_noise"] > 0 else 1
        ours = stats(draws_hwfault(fields, w, b, x, d), ideal)
        peer = stats(peer_draws(fields, w, b, x, d), ideal)
        units = read_scale(fields, w, x), fields
        row = {"name": name, "fields": fields, "inputs": kind, "in_features": n, "out_features": m, "draws": d,
               "hwfault": _pooled(ours), "peer": _pooled(peer), **compare(ours, peer, *units)}
        if status["installed"] and args.numpy_draws:  # the tests' numpy reference against aihwkit too
            ref = stats(draws_numpy(fields, w, b, x, min(d, args.numpy_draws)), ideal)
            row["numpy_reference"] = {**_pooled(ref), **compare(ref, peer, *units)}
        rows.append(row)
    controls = []
    for name, i, wrong in CONTROLS:
        _, fields, kind, n = cases()[i]
        w, b, x = problem(kind, n, m, args.rows)
        ideal = (x @ w.T + b).numpy()
        ours = stats(draws_hwfault({**fields, **wrong}, w, b, x, args.draws), ideal)
        peer = stats(peer_draws(fields, w, b, x, args.draws), ideal)
        cmp = compare(ours, peer, read_scale(fields, w, x), fields)
        controls.append({"name": name, "case": cases()[i][0], "hwfault_changed": wrong, "hwfault": _pooled(ours),
                         "peer": _pooled(peer), **cmp, "fails_as_it_should": not cmp["agree"]})
    res = {"peer": peer_name, "aihwkit": status, "rows_per_call": args.rows, "draws": args.draws,
           "seconds": round(time.perf_counter() - t0, 1),
           "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
           "cases": rows, "controls": controls,
           "all_agree": all(r["agree"] for r in rows) and all(r.get("numpy_reference", {"agree": True})["agree"] for r in rows),
           "controls_fail": all(c["fails_as_it_should"] for c in controls)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"hwfault periphery vs {peer_name}: Linear (128 outputs), {args.rows} inputs x {args.draws} draws; "
          "error e = y - (Wx + b)")
    print(f"{'case':32s} {'err std':>8s} {'peer':>8s} {'ratio':>6s} {'err det':>8s} {'peer':>8s} {'chi2':>5s} agree"
          + ("  numpy ref: ratio chi2 agree" if status["installed"] and args.numpy_draws else ""))
    for r in rows:
        h, p = r["hwfault"], r["peer"]
        if "std_ratio" in r:
            mid = f"{r['std_ratio']:6.3f} {h['error_det']:8.5f} {p['error_det']:8.5f} {r['mean_chi2']:5.2f}"
        else:
            mid = f"{'-':>6s} {h['error_det']:8.5f} {p['error_det']:8.5f} {'-':>5s}"
        line = f"{r['name']:32s} {h['error_std']:8.5f} {p['error_std']:8.5f} {mid} {'yes' if r['agree'] else 'NO':>5s}"
        if "numpy_reference" in r:
            q = r["numpy_reference"]
            line += (f"  {q['std_ratio']:6.3f} {q['mean_chi2']:5.2f} {'yes' if q['agree'] else 'NO'}" if "std_ratio" in q
                     else f"  equal {q['equal_fraction']:.4f} {'yes' if q['agree'] else 'NO'}")
        print(line)
        if "equal_fraction" in r:
            print(f"{'':32s} noise off: {r['equal_fraction']:.4%} of outputs equal; the others differ by "
                  f"{r['diff_in_adc_steps']} ADC step(s) of their round")
    for c in controls:
        print(f"{c['name']:32s} {c['hwfault']['error_std']:8.5f} {c['peer']['error_std']:8.5f} {c['std_ratio']:6.3f} "
              f"{c['hwfault']['error_det']:8.5f} {c['peer']['error_det']:8.5f} {c['mean_chi2']:5.2f} "
              f"{'yes' if c['agree'] else 'no':>5s}  (must not agree: {'ok' if c['fails_as_it_should'] else 'FAILED'})")
    print(f"wrote {args.out}")
    return 0 if res["all_agree"] and res["controls_fail"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
