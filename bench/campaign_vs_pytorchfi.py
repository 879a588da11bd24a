"""Weight-fault campaigns in PyTorchFI and in hwfault, the same work in one run.

    .venv/bin/python bench/campaign_vs_pytorchfi.py [--trials 300] [--repeats 3] [--resnet18-trials 300]

On the residual zoo model (mnist1d-resnet, 1000 test inputs, one batch, one thread each):
(a) classic statistical fault injection: one random bit flip per trial in the fp32 weights, sites
    uniform over all conv/linear weights (hwfault preset fp32-single-bitflip);
(b) bit-error-rate patterns over all those weights (fp32, BER 1e-5: about 18 flips per trial).
PyTorchFI gets its sites from the same distributions (uniform over weights, uniform bit; for (b)
the same Binomial count), injected with ``declare_weight_fi(function=...)``, which deep-copies the
model for every trial. Both score SDC against the same golden run. Reported: trials/s of each,
``speedup_vs_pytorchfi`` and hwfault's ``per_trial_vs_floor`` (medians of the per-repeat ratios).
The floor is, for (a), the fault-free forward from each trial's faulty layer on given that layer's
cached input; for (b) one fault-free evaluation. It is timed interleaved with the campaign (after
every chunk of 10 trials, the floors of those trials), because this shared machine's speed drifts
by 20% within a minute. Also the SDC rates with Wilson 95% intervals.
(c) real size: the single-bit-flip campaign of (a) on a CIFAR ResNet-18 (bench/_nets.py, 11.2M
    parameters, seeded weights) over 500 seeded 3x32x32 inputs labelled by the model: hwfault runs
    ``--resnet18-trials`` trials (default 300); PyTorchFI, whose every trial is a deep copy and a
    whole forward pass, runs ``--pytorchfi-trials`` of them (default 10) and is compared by trials/s.
    ``per_trial_vs_clean`` is hwfault's time per trial in fault-free evaluations of the same model
    and inputs (``hw.evaluate``, one thread, timed before and after the campaign).
Writes bench/results/campaign_vs_pytorchfi.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch import nn

from hwfault import load_data, load_model
from hwfault.analyses.campaign.incremental import ForwardCache
from hwfault.analyses.campaign.plan import make_plan
from hwfault.analyses.campaign.run import _CONTEXTS, Recipe, context, run_campaign
from hwfault.stats import wilson
from hwfault.faults import Chip
from hwfault.runtime import tune_allocator
from hwfault.spec import load_chip, parse_chip

OUT = Path(__file__).resolve().parent / "results"
MODEL, DATA = "mnist1d-resnet", "mnist1d"
BER_SPEC = """schema_version = 1
name = "fp32-ber-1e-5"
description = "bench: fp32 weights, independent bit flips at BER 1e-5"
[format]
kind = "fp32"
[[faults]]
kind = "bitflip"
ber = 1e-5
"""


def flip_float(v: float, bit: int) -> float:
    (i,) = struct.unpack("<I", struct.pack("<f", v))
    return struct.unpack("<f", struct.pack("<I", i ^ (1 << bit)))[0]


class PyTorchFICampaign:
    """The same campaign written the way PyTorchFI users write it."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, golden, types=(nn.Conv1d, nn.Linear)):
        from pytorchfi.core import fault_injection

        self.model, self.x, self.y = model, x, y
        self.golden_pred, self.ok = golden.pred, golden.correct  # the golden run hwfault scores against
        self.fi = fault_injection(model, len(x), input_shape=list(x.shape[1:]), layer_types=list(types))
        self.layers = [m for m in model.modules() if isinstance(m, types)]
        self.sizes = np.array([m.weight.numel() for m in self.layers])

    def sites(self, rng: np.random.Generator, count: int):
        """``count`` weights uniform over all injectable weights, each with a uniform bit."""
        flat = rng.choice(self.sizes.sum(), size=count, replace=False)
        offs = np.cumsum(np.r_[0, self.sizes])
        out = []
        for f in flat:
            layer = int(np.searchsorted(offs, f, side="right") - 1)
            idx = np.unravel_index(int(f - offs[layer]), self.layers[layer].weight.shape)
            out.append((layer, tuple(int(i) for i in idx) + (None,) * (4 - len(idx)), int(rng.integers(32))))
        return out

    def trial(self, sites) -> tuple[int, int]:
        bits = {(layer, idx): bit for layer, idx, bit in sites}

        def flip(weight, idx):
            key = next(k for k in bits if k[1] == tuple(idx))
            return flip_float(float(weight[tuple(i for i in idx if i is not None)]), bits[key])

        corrupted = self.fi.declare_weight_fi(
            function=flip, layer_num=[s[0] for s in sites], k=[s[1][0] for s in sites], dim1=[s[1][1] for s in sites],
            dim2=[s[1][2] for s in sites], dim3=[s[1][3] for s in sites])
        with torch.no_grad():
            out = corrupted(self.x)
        finite = torch.isfinite(out).all(dim=1)
        sdc = bool((self.ok & ((out.argmax(1) != self.golden_pred) | ~finite)).any())
        return int(sdc), int(not bool(finite.all()))


def timed(fn, repeats: int) -> tuple[float, object]:
    times, last = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resnet18-trials", type=int, default=300, help="0 skips the ResNet-18 case")
    ap.add_argument("--pytorchfi-trials", type=int, default=10, help="PyTorchFI's trials in the ResNet-18 case")
    ap.add_argument("--only-resnet18", action="store_true", help="run case (c) only, keeping (a) and (b) from the last JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tune_allocator()  # what every campaign process does; applies to all the measurements below alike
    model = load_model(MODEL)
    x, y = load_data(DATA).tensors
    n = args.trials
    results = {}

    # the floors: a fault-free evaluation, and the forward pass from each layer on given its input
    cache = ForwardCache(model, x)

    fulls = []
    cases = () if args.only_resnet18 else (("a_single_bitflip", load_chip("fp32-single-bitflip")),
                                           ("b_ber_patterns", parse_chip(BER_SPEC, "bench")))
    for case, spec in cases:
        recipe = Recipe(MODEL, DATA, spec.to_dict(), seed=0)
        plan = make_plan(Chip.build(spec, model), trials=n)
        context(recipe)  # golden run and cache: once per campaign, outside the timing of both tools
        golden = context(recipe).golden
        pfi = PyTorchFICampaign(model, x, y, golden)
        rng = np.random.default_rng(1)
        rows = run_campaign(recipe, plan).rows  # warm-up, and the fault counts PyTorchFI gets
        counts = [r["n_faults"] for r in rows]
        site_lists = [pfi.sites(rng, c) for c in counts]  # the same fault counts, independent sites
        # The floor is measured interleaved with the campaign itself: after every chunk of 10 trials
        # lands, the on_rows callback times the floor of exactly those trials (for (a) the forward
        # from each trial's faulty layer on, for (b) one fault-free evaluation per trial), so the two
        # share the state of this shared machine; the callback's time is taken out of the campaign's.
        # PyTorchFI runs right after hwfault in each repeat; medians of the per-repeat ratios.
        t_hws, t_pfis, floors_s, speedups, vs_floor = [], [], [], [], []
        for rep in range(args.repeats):
            print(f"{case}: repeat {rep + 1}/{args.repeats}", file=sys.stderr, flush=True)
            spent = {"floor": 0.0, "callback": 0.0}

            def measure_floor(chunk_rows, spent=spent, case=case):
                c0 = time.perf_counter()
                with torch.no_grad():
                    for r in chunk_rows:
                        f0 = time.perf_counter()
                        if case.startswith("a"):
                            cache._run(cache._order(frozenset([r["faults"].split("[")[0]])), {})
                        else:
                            model(x)
                        spent["floor"] += time.perf_counter() - f0
                spent["callback"] += time.perf_counter() - c0

            t0 = time.perf_counter()
            res = run_campaign(recipe, plan, chunk=10, on_rows=measure_floor)
            t_hw = time.perf_counter() - t0 - spent["callback"]
            t0 = time.perf_counter()
            pres = [pfi.trial(s) for s in site_lists]
            t_pfi = time.perf_counter() - t0
            with torch.no_grad():
                fulls.append(timed(lambda: model(x), 3)[0])
            floor = spent["floor"] / n
            t_hws.append(t_hw)
            t_pfis.append(t_pfi)
            floors_s.append(floor)
            speedups.append(t_pfi / t_hw)
            vs_floor.append((t_hw / n) / floor)
        rows = res.rows
        t_hw, t_pfi, full = statistics.median(t_hws), statistics.median(t_pfis), statistics.median(fulls[-args.repeats:])
        hw_sdc = sum(r["sdc"] for r in rows)
        pf_sdc = sum(s for s, _ in pres)
        hw_ci, pf_ci = wilson(hw_sdc, n), wilson(pf_sdc, n)
        results[case] = {
            "trials": n, "hwfault_trials_per_s": n / t_hw, "pytorchfi_trials_per_s": n / t_pfi,
            "speedup_vs_pytorchfi": statistics.median(speedups), "per_trial_s": t_hw / n,
            "floor_s": statistics.median(floors_s),
            "floor": "fault-free forward from each trial's faulty layer on (cached input), mean over the trials"
            if case.startswith("a")
            else "one fault-free evaluation",
            "per_trial_vs_floor": statistics.median(vs_floor), "pytorchfi_per_trial_vs_full_eval": (t_pfi / n) / full,
            "per_repeat": {"speedup": speedups, "per_trial_vs_floor": vs_floor},
            "sdc_rate": {"hwfault": hw_sdc / n, "hwfault_ci95": hw_ci, "pytorchfi": pf_sdc / n, "pytorchfi_ci95": pf_ci,
                         "intervals_overlap": hw_ci[0] <= pf_ci[1] and pf_ci[0] <= hw_ci[1]},
            "due_rate": {"hwfault": sum(r["due"] for r in rows) / n, "pytorchfi": sum(d for _, d in pres) / n},
            "mean_faults_per_trial": float(np.mean(counts)),
        }
    previous = OUT / "campaign_vs_pytorchfi.json"
    if args.only_resnet18 and previous.exists():
        old = json.loads(previous.read_text())
        results, fulls = {k: v for k, v in old["cases"].items() if not k.startswith("c_")}, [old["full_eval_s"]]
    if args.resnet18_trials:
        results["c_resnet18_single_bitflip"] = resnet18_case(args.resnet18_trials, args.pytorchfi_trials)
    full = statistics.median(fulls)
    out = {"model": MODEL, "data": DATA, "inputs": len(x), "threads": 1, "repeats": args.repeats,
           "allocator": "glibc mmap/trim thresholds raised (hwfault.runtime.tune_allocator) for every measurement",
           "full_eval_s": full, "cases": results,
           "machine": {"platform": platform.platform(), "torch": torch.__version__, "python": platform.python_version()}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "campaign_vs_pytorchfi.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{MODEL}, {len(x)} inputs, 1 thread, {n} trials x {args.repeats} repeats (median of per-repeat ratios); "
          f"fault-free evaluation {1e3 * full:.1f} ms\n")
    print("| case | hwfault trials/s | PyTorchFI trials/s | speedup | hwfault per trial / floor | SDC hwfault [95% CI] | SDC PyTorchFI [95% CI] |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for case, r in results.items():
        if case.startswith("c_"):
            continue
        s = r["sdc_rate"]
        print(f"| {case} | {r['hwfault_trials_per_s']:.1f} | {r['pytorchfi_trials_per_s']:.1f} | "
              f"{r['speedup_vs_pytorchfi']:.2f}x | {r['per_trial_vs_floor']:.2f}x | "
              f"{100 * s['hwfault']:.1f} [{100 * s['hwfault_ci95'][0]:.1f}, {100 * s['hwfault_ci95'][1]:.1f}] | "
              f"{100 * s['pytorchfi']:.1f} [{100 * s['pytorchfi_ci95'][0]:.1f}, {100 * s['pytorchfi_ci95'][1]:.1f}] |")
    c = results.get("c_resnet18_single_bitflip")
    if c:
        print(f"\nResNet-18 (11.2M parameters), {c['inputs']} inputs, 1 thread: hwfault {c['trials']} trials at "
              f"{c['hwfault_trials_per_s']:.3f}/s, PyTorchFI {c['pytorchfi_trials']} trials at "
              f"{c['pytorchfi_trials_per_s']:.3f}/s: {c['speedup_vs_pytorchfi']:.1f}x; per trial "
              f"{c['per_trial_vs_clean']:.3f} clean evaluations; SDC {100 * c['sdc_rate']['hwfault']:.1f}%, "
              f"DUE {100 * c['due_rate']['hwfault']:.1f}%; cache {c['cache']}")


def resnet18_case(n: int, n_pfi: int) -> dict:
    """(c): the single-bit-flip campaign on a CIFAR ResNet-18, hwfault against PyTorchFI by trials/s."""
    import hwfault as hw
    from _nets import resnet18

    model = resnet18()
    x = torch.randn(500, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    spec = load_chip("fp32-single-bitflip")

    def clean() -> float:
        t0 = time.perf_counter()
        hw.evaluate(model, (x, y))
        return time.perf_counter() - t0

    print("c_resnet18: clean evaluations", file=sys.stderr, flush=True)
    cleans = [clean() for _ in range(2)]
    print(f"c_resnet18: hwfault campaign, {n} trials", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res = hw.campaign(model, (x, y), spec, trials=n)
    t_total = time.perf_counter() - t0
    rows = res.rows
    t_trials = sum(r["duration"] for r in rows)
    cleans += [clean() for _ in range(2)]
    golden = next(iter(_CONTEXTS.values())).golden  # the golden run the campaign scored against
    pfi = PyTorchFICampaign(model, x, y, golden, types=(nn.Conv2d, nn.Linear))
    rng = np.random.default_rng(1)
    sites = [pfi.sites(rng, 1) for _ in range(n_pfi)]
    print(f"c_resnet18: PyTorchFI, {n_pfi} trials", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    pres = [pfi.trial(s) for s in sites]
    t_pfi = time.perf_counter() - t0
    cleans += [clean()]
    clean_s = statistics.median(cleans)
    hw_sdc = sum(r["sdc"] for r in rows)
    return {"model": "resnet18 (bench/_nets.py)", "inputs": len(x), "trials": n, "pytorchfi_trials": n_pfi,
            "clean_eval_s": clean_s, "clean_eval_s_all": cleans,
            "hwfault_seconds_total": t_total, "hwfault_seconds_in_trials": t_trials,
            "hwfault_trials_per_s": n / t_trials, "pytorchfi_trials_per_s": n_pfi / t_pfi,
            "speedup_vs_pytorchfi": (n / t_trials) / (n_pfi / t_pfi),
            "per_trial_vs_clean": (t_trials / n) / clean_s,
            "setup_vs_clean": (t_total - t_trials) / clean_s,
            "pytorchfi_per_trial_vs_clean": (t_pfi / n_pfi) / clean_s,
            "sdc_rate": {"hwfault": hw_sdc / n, "hwfault_ci95": wilson(hw_sdc, n),
                         "pytorchfi": sum(s for s, _ in pres) / n_pfi},
            "due_rate": {"hwfault": sum(r["due"] for r in rows) / n},
            "cache": res.cache}


if __name__ == "__main__":
    main()
