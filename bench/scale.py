"""How hwfault's analyses scale to real-size networks: time and peak memory per analysis, as
multiples of one clean evaluation of the same model and data (issue 14, item 5).

Models: the zoo CNN ``digits-cnn`` on the first N digits test inputs, and four real-size networks
from ``bench/_nets.py`` (untrained, deterministic weights): ``resnet18`` (11.2M parameters),
``resnet50`` (23.5M) and ``vit`` (10.7M) on N seeded N(0, 1) CIFAR-shaped inputs labelled with the
model's own clean predictions (clean accuracy 1 by construction; a fault is seen as the drop), and
``gpt`` (14.3M, a causal char LM, task ``lm``) on N windows of 128 characters of the shipped pycode
test text (two consecutive 64-character windows each). Operations, all through ``import hwfault as hw``:

- ``clean``: ``hw.evaluate`` (the unit: median of 3 evaluations);
- ``sweep``: the one-step gradient corruption, L2 over all parameters, one eps;
- ``estimate``: ``int8-sram-0.5v``, 10 Monte-Carlo chips, worst case with the default 10 ascent
  steps (and, the chip being bit flips, the bit search of the worst case: up to 40 rounds of one
  evaluation per weight tensor), no per-fault breakdown, no severity curve, no certified floor;
- ``campaign``: ``fp32-single-bitflip`` (one random bit flip in the fp32 weights per trial), a fixed
  number of trials (300 for digits-cnn and resnet18, 100 for the others), on the N inputs;
- ``bits``: the progressive bit search in int8 to the default target (accuracy 0.11, perplexity x10),
  bounded: ``max_flips=2``, ``candidates=1`` (one evaluation per weight tensor and flip), one
  random-flip run (doubling then bisection: about 2 log2(k) evaluations);
- ``harden``: one epoch of ``crt-star`` on the N inputs (batch 64);
- ``export``: ``hw.export_onnx`` fp32, with its parity check on the N inputs.

Each (model, operation) runs in a fresh subprocess, so peak resident sets are separable: the peak is
the child's ``VmHWM`` (``ru_maxrss`` would carry the parent's peak across exec), read right after the
operation; it includes the interpreter, torch, the model and the data, as the clean evaluation's does.
Time is the operation's wall time alone (model and data are built, a 2-input ``hw.evaluate`` run and
the operation's hwfault module imported before the clock starts). Right after the operation the
child times three clean evaluations of its own: ``x_clean`` divides by their median (the same process,
minute and allocator state: this shared machine's speed drifts, and a campaign tunes glibc's
allocator, which by itself makes a ResNet-18 evaluation of 500 inputs about 1.9x faster), and
``x_clean_ref`` by the median of the clean child's three. Peak RSS is given as a multiple of the
clean child's.

An operation still running after ``--timeout-x`` clean evaluations of its model (default 200, at
least ``--timeout-floor`` 120 s), or whose resident set passes ``--max-rss-mib`` (default half the
machine's memory), is stopped: its row gives the time and peak so far as lower bounds (``>=``).

Writes bench/results/scale.json (machine, settings, per model and operation the seconds, MiB and
multiples, and the issue's targets for ResNet-18 with whether each is met) and scale.md, and prints
the table. ``--quick``: tiny sizes (16 inputs, 4 LM windows, 10 campaign trials, 2 chips, 2 steps,
1 flip) for a smoke run of the whole pipeline.

    python bench/scale.py [--models digits-cnn,resnet18,resnet50,vit,gpt] [--ops clean,sweep,...]
                          [--inputs N] [--trials T] [--threads 1] [--quick] [--merge]
                          [--timeout-x 200] [--timeout-floor 120] [--max-rss-mib M] [--render]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = ("digits-cnn", "resnet18", "resnet50", "vit", "gpt")
OPS = ("clean", "sweep", "estimate", "campaign", "bits", "harden", "export")
INPUTS = {"digits-cnn": 500, "resnet18": 500, "resnet50": 500, "vit": 500, "gpt": 100}
TRIALS = {"digits-cnn": 300, "resnet18": 300, "resnet50": 100, "vit": 100, "gpt": 100}
QUICK = {"inputs": 16, "lm_inputs": 4, "trials": 10, "chips": 2, "steps": 2, "flips": 1}
FULL = {"chips": 10, "steps": 10, "flips": 2}
SWEEP_EPS = 1.0
CHIP = "int8-sram-0.5v"
CAMPAIGN_CHIP = "fp32-single-bitflip"
LM_CONTEXT = 128
MARK = "@@scale@@ "
API = {"clean": lambda hw: hw.evaluate, "sweep": lambda hw: hw.sweep, "estimate": lambda hw: hw.estimate,
       "campaign": lambda hw: hw.campaign, "bits": lambda hw: hw.bits, "harden": lambda hw: hw.harden,
       "export": lambda hw: hw.export_onnx}

# issue 14's targets for ResNet-18: (operation, what, limit, description)
TARGETS = (
    ("sweep", "x_clean", 5.0, "sweep (gradient, one eps) <= 5 clean evaluations"),
    ("campaign", "x_clean_per_trial", 0.1, "campaign <= 0.1 clean evaluations per trial"),
    ("campaign", "rss_x_clean", 2.0, "campaign peak RSS <= 2x the clean evaluation's"),
    ("estimate", "x_clean", 40.0, "estimate (10 Monte-Carlo chips) <= 40 clean evaluations"),
)


# ----------------------------------------------------------------------------- the child


def _status(key: str) -> int:
    """``VmHWM`` / ``VmRSS`` of this process in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def build(model_name: str, n: int, cache: Path):
    """(model, dataset, task name, data description) of one bench model on ``n`` inputs."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    import hwfault as hw

    if model_name == "digits-cnn":
        model = hw.load_model("digits-cnn")
        x, y = hw.load_data("digits").tensors
        return model, TensorDataset(x[:n], y[:n]), "classification", f"digits test, first {min(n, len(x))}"
    import _nets

    if model_name == "gpt":
        from hwfault.text import text_arrays

        model = _nets.gpt()
        x, y = (torch.from_numpy(a) for a in text_arrays("test"))  # consecutive 64-char windows
        m = min(n, len(x) // 2)
        x2 = x[: 2 * m].reshape(m, 2 * x.shape[1])
        y2 = y[: 2 * m].reshape(m, 2 * y.shape[1])  # y is x shifted by one: the pairs stay consistent
        return model, TensorDataset(x2, y2), "lm", f"pycode test, {m} windows of {2 * x.shape[1]} characters"
    model = _nets.NETS[model_name]()
    x = torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(1234))
    labels = cache / f"labels_{model_name}_{n}.npy"
    if labels.exists():
        y = torch.from_numpy(np.load(labels))
    else:  # the model's own predictions, in small batches (a small peak: later children read the file)
        with torch.no_grad():
            y = torch.cat([model(x[i:i + 25]).argmax(1) for i in range(0, n, 25)])
        np.save(labels, y.numpy())
    for p in model.parameters():
        p.requires_grad_(True)
    return model, TensorDataset(x, y), "classification", f"{n} seeded N(0,1) 3x32x32, own predictions as labels"


def run_op(op: str, model, data, task: str, settings: dict, tmp: Path) -> dict:
    """Run one operation; returns a few figures of its result (what it found, for a sanity check)."""
    import hwfault as hw

    if op == "clean":
        r = hw.evaluate(model, data, task=task)
        return {"metric": r.metric}
    if op == "sweep":
        r = hw.sweep(model, data, epsilons=[SWEEP_EPS], norm=2, methods=["gradient"], seed=0, task=task)
        d = r.to_dict()
        return {"eps": SWEEP_EPS, "k": d.get("k"), "gradient": _metric(d["results"][0])}
    if op == "estimate":
        r = hw.estimate(model, data, CHIP, trials=settings["chips"], steps=settings["steps"], seed=0,
                        per_fault=False, severities=(), certified=None, task=task)
        d = r.to_dict()
        return {"chip": CHIP, "trials": settings["chips"], "steps": settings["steps"],
                "monte_carlo": _pick(d.get("random", {}), ("perplexity_mean", "accuracy_mean")),
                "worst_case": _metric(d.get("worst_case", {}).get("one_step", {}))}
    if op == "campaign":
        r = hw.campaign(model, data, CAMPAIGN_CHIP, trials=settings["trials"], seed=0, task=task)
        s = r.summary()["overall"]
        return {"chip": CAMPAIGN_CHIP, "trials": settings["trials"], "sdc_rate": s.get("sdc_rate"),
                "trials_per_second": r.trials_per_second, "library_seconds": r.seconds}
    if op == "bits":
        r = hw.bits(model, data, format="int8", max_flips=settings["flips"], random_runs=1, candidates=1,
                   seed=0, task=task)
        d = r.to_dict()
        return {"max_flips": settings["flips"], "until": d.get("until"), "flips": d.get("flips"),
                "random_flips": d.get("random_flips")}
    if op == "harden":
        r = hw.harden(model, data, hw.HardenConfig(method="crt-star", epochs=1, batch_size=64, seed=0), task=task)
        last = r.history[-1] if r.history else {}
        return {"method": "crt-star", "epochs": 1,
                "last_epoch": {k: v for k, v in last.items() if isinstance(v, (int, float))}}
    if op == "export":
        rep = hw.export_onnx(model, tmp / "model.onnx", data=data, fmt="fp32", task=task)
        return {"passed": rep.passed, "max_abs_delta": rep.max_abs_delta,
                "onnx_mib": (tmp / "model.onnx").stat().st_size / 2**20}
    raise ValueError(op)


def _metric(row: dict) -> dict:
    return _pick(row, ("perplexity", "accuracy"))  # the LM rows carry both: its headline first


def _pick(d: dict, keys) -> dict:
    return {k: d[k] for k in keys if k in d}


def child(model_name: str, op: str, settings: dict, cache: Path) -> None:
    import torch

    torch.set_num_threads(settings["threads"])
    import hwfault as hw

    t = time.perf_counter()
    model, data, task, about = build(model_name, settings["inputs"], cache)
    build_s = time.perf_counter() - t
    x, y = data.tensors
    # warm-up, out of every measurement: torch's lazy initialisation, the evaluation path, the
    # operation's module (hwfault imports its analyses on first use)
    hw.evaluate(model, (x[:2], y[:2]), task=task)
    API[op](hw)
    rss_ready = _status("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        out = {"model": model_name, "op": op, "task": task, "data": about, "inputs": len(x),
               "params": sum(p.numel() for p in model.parameters()), "build_seconds": build_s,
               "rss_ready_mib": rss_ready / 1024}
        if op == "clean":
            times = []
            for _ in range(3):
                t = time.perf_counter()
                res = run_op(op, model, data, task, settings, Path(tmp))
                times.append(time.perf_counter() - t)
            out.update(seconds=statistics.median(times), seconds_all=times, peak_rss_mib=_status("VmHWM") / 1024,
                       result=res)
        else:
            t = time.perf_counter()
            res = run_op(op, model, data, task, settings, Path(tmp))
            out["seconds"] = time.perf_counter() - t
            out["peak_rss_mib"] = _status("VmHWM") / 1024
            out["result"] = res
            here = []
            for _ in range(3):
                t = time.perf_counter()
                hw.evaluate(model, data, task=task)
                here.append(time.perf_counter() - t)
            out["clean_seconds_here"], out["clean_seconds_here_all"] = statistics.median(here), here
    print(MARK + json.dumps(out, default=float), flush=True)


# ----------------------------------------------------------------------------- the parent


def settings_for(model: str, args) -> dict:
    lm = model == "gpt"
    if args.quick:
        s = {"inputs": QUICK["lm_inputs"] if lm else QUICK["inputs"], "trials": QUICK["trials"],
             "chips": QUICK["chips"], "steps": QUICK["steps"], "flips": QUICK["flips"]}
    else:
        s = {"inputs": INPUTS[model], "trials": TRIALS[model], **FULL}
    if args.inputs is not None:
        s["inputs"] = args.inputs
    if args.trials is not None:
        s["trials"] = args.trials
    return {**s, "threads": args.threads}


def _proc_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _proc_kib_total() -> int:
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))


def measure(model: str, op: str, settings: dict, cache: Path, timeout: float | None, max_rss_mib: float) -> dict:
    """One child; stopped (and its peak so far recorded) past ``timeout`` seconds or ``max_rss_mib``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", model, op, "--child-settings",
           json.dumps(settings), "--cache", str(cache)]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=None, text=True)
        stopped, hwm = None, None
        while p.poll() is None:
            hwm = _proc_kib(p.pid, "VmHWM") or hwm
            rss = _proc_kib(p.pid, "VmRSS")
            elapsed = time.perf_counter() - t
            if timeout is not None and elapsed > timeout:
                stopped = f"timed out after {timeout:.0f} s"
            elif rss is not None and rss / 1024 > max_rss_mib:
                stopped = f"stopped at {rss / 1024:.0f} MiB resident (limit --max-rss-mib {max_rss_mib:.0f})"
            if stopped:
                p.kill()
                p.wait()
                return {"error": stopped, "stopped": True, "seconds_at_stop": elapsed,
                        "peak_rss_mib_at_stop": None if hwm is None else hwm / 1024}
            time.sleep(0.25)
        out.seek(0)
        stdout = out.read()
    line = next((ln for ln in stdout.splitlines() if ln.startswith(MARK)), None)
    if p.returncode != 0 or line is None:
        return {"error": f"child exited {p.returncode}", "stdout_tail": stdout[-2000:]}
    r = json.loads(line[len(MARK):])
    r["process_seconds"] = time.perf_counter() - t
    return r


def derive(rows: dict) -> None:
    """Multiples of the clean evaluation, in place. A stopped child gives lower bounds (``at_least``)."""
    clean = rows.get("clean")
    if not clean or "error" in clean:
        return
    for op, r in rows.items():
        if op == "clean":
            continue
        if r.get("stopped"):
            r["at_least"] = True
            r["x_clean_ref"] = r["seconds_at_stop"] / clean["seconds"]
            r["x_clean"] = r["x_clean_ref"]
            if r.get("peak_rss_mib_at_stop") is not None:
                r["rss_x_clean"] = r["peak_rss_mib_at_stop"] / clean["peak_rss_mib"]
            if op == "campaign":
                r["x_clean_per_trial"] = r["x_clean"] / r["trials"]
            continue
        if "error" in r:
            continue
        r["x_clean"] = r["seconds"] / r["clean_seconds_here"]
        r["x_clean_ref"] = r["seconds"] / clean["seconds"]
        r["rss_x_clean"] = r["peak_rss_mib"] / clean["peak_rss_mib"]
        if op == "campaign":
            r["x_clean_per_trial"] = r["x_clean"] / r["result"]["trials"]
    clean.update(x_clean=1.0, x_clean_ref=1.0, rss_x_clean=1.0)


def targets(models: dict) -> list[dict]:
    rows = models.get("resnet18", {}).get("ops", {})
    out = []  # (with --quick the sizes are too small for these to mean anything: markdown says so)
    for op, key, limit, text in TARGETS:
        r = rows.get(op, {})
        value, at_least = r.get(key), bool(r.get("at_least"))
        t = {"model": "resnet18", "op": op, "measure": key, "limit": limit, "target": text, "value": value,
             "at_least": at_least, "met": _met(value, limit, at_least)}
        if key in ("x_clean", "x_clean_per_trial") and value is not None:
            # the same time over the clean process's evaluation (no allocator tuning, another minute)
            per = (r["result"]["trials"] if "result" in r else r["trials"]) if op == "campaign" else 1
            ref = r["x_clean_ref"] / per
            t.update(value_vs_clean_run=ref, met_vs_clean_run=_met(ref, limit, at_least))
        out.append(t)
    return out


def _met(value, limit: float, at_least: bool):
    if value is None or (at_least and value <= limit):
        return None  # not measured, or stopped below the limit: unknown
    return value <= limit and not at_least


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    from _common import md_table

    rows = []
    for model, m in result["models"].items():
        for op in OPS:
            r = m["ops"].get(op)
            if r is None:
                continue
            if r.get("stopped"):
                per_trial = f" (>= {r['x_clean_per_trial']:.3f}/trial)" if "x_clean_per_trial" in r else ""
                rows.append([model, op, f">= {r['seconds_at_stop']:.3g}", f">= {fmt(r.get('x_clean'), '.3g')}" + per_trial,
                             f">= {fmt(r.get('x_clean_ref'), '.3g')}", f">= {fmt(r.get('peak_rss_mib_at_stop'), '.0f')}",
                             f">= {fmt(r.get('rss_x_clean'), '.2f')}", r["error"]])
                continue
            if "error" in r:
                rows.append([model, op, "error: " + r["error"], "", "", "", "", ""])
                continue
            per_trial = f" ({r['x_clean_per_trial']:.3f}/trial)" if "x_clean_per_trial" in r else ""
            rows.append([model, op, f"{r['seconds']:.3g}", fmt(r.get("x_clean"), ".2f") + per_trial,
                         fmt(r.get("x_clean_ref"), ".2f"), f"{r['peak_rss_mib']:.0f}", fmt(r.get("rss_x_clean"), ".2f"),
                         _brief(op, r.get("result", {}))])
    table = md_table(["model", "operation", "seconds", "x clean (same process)", "x clean (clean run)",
                      "peak RSS (MiB)", "x clean RSS", "result"], rows,
                     ["---", "---", "--:", "--:", "--:", "--:", "--:", "---"])
    about = "\n".join(f"- `{k}`: {fmt(m.get('params'), ',')} parameters, {m.get('data', '?')}, {m['settings']}"
                      for k, m in result["models"].items())
    def verdict(met) -> str:
        return "met" if met else "not met" if met is not None else "not measured"

    ge = lambda t: ">= " if t.get("at_least") else ""
    tg = "\n".join(f"- {t['target']}: {ge(t)}{fmt(t['value'], '.3g')} ({verdict(t['met'])})"
                   + (f"; against the clean process's evaluation {ge(t)}{fmt(t['value_vs_clean_run'], '.3g')} "
                      f"({verdict(t['met_vs_clean_run'])})" if "value_vs_clean_run" in t else "")
                   for t in result["targets"])
    mc = result["machine"]
    return (f"# Scale: hwfault's analyses on real-size networks\n\n{table}\n\n{about}\n\n"
            f"Targets (issue 14, ResNet-18{'; --quick sizes, not a verdict' if result['settings']['quick'] else ''}):"
            f"\n\n{tg}\n\n"
            f"One fresh process per row; peak RSS is the process's VmHWM, its multiple against the clean row's. "
            f"x clean (same process): seconds over the median of three clean evaluations run in the same process right "
            f"after the operation; (clean run): over the clean row's median of three. `>=`: the operation was stopped "
            f"(time or memory bound), its figures are lower bounds. {mc['platform']}, {mc['cpu_count']} CPUs, "
            f"torch {mc['torch']}, {result['settings']['threads']} thread(s); "
            f"{'--quick; ' if result['settings']['quick'] else ''}{mc['date']}.\n")


def _brief(op: str, r: dict) -> str:
    def g(d, k):
        return next((f"{kk} {v:.4g}" for kk, v in d.items() if isinstance(v, (int, float))), "") if d else ""

    if op == "clean":
        return "metric " + fmt(r.get("metric"), ".4g")
    if op == "sweep":
        return g(r.get("gradient"), None)
    if op == "estimate":
        return "MC " + g(r.get("monte_carlo"), None) + "; worst " + g(r.get("worst_case"), None)
    if op == "campaign":
        return f"{r.get('trials')} trials, SDC rate {fmt(r.get('sdc_rate'), '.3g')}"
    if op == "bits":
        return f"flips {r.get('flips')} (max {r.get('max_flips')}), random {r.get('random_flips')}"
    if op == "harden":
        return "epoch 1: " + ", ".join(f"{k} {v:.4g}" for k, v in r.get("last_epoch", {}).items() if k != "epoch")
    if op == "export":
        return f"parity {'passed' if r.get('passed') else 'FAILED'}, {fmt(r.get('onnx_mib'), '.1f')} MiB"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {', '.join(OPS)} (clean always runs)")
    ap.add_argument("--inputs", type=int, default=None,
                    help="inputs per model (default 500; the LM: 100 windows of 128 characters)")
    ap.add_argument("--trials", type=int, default=None, help="campaign trials (default 300 for digits-cnn and "
                                                             "resnet18, 100 for the others)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every child (default 1)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every step")
    ap.add_argument("--merge", action="store_true", help="keep the other models of an existing --out JSON (and, for a model run again with clean among "
                         "--ops, its operations not run again)")
    ap.add_argument("--timeout-x", type=float, default=200.0,
                    help="stop an operation after this many clean evaluations of its model (default 200; "
                         "0: never); it is reported as a lower bound")
    ap.add_argument("--timeout-floor", type=float, default=120.0,
                    help="... but never before this many seconds (default 120)")
    ap.add_argument("--max-rss-mib", type=float, default=None,
                    help="stop an operation whose resident set passes this (default: half the machine's memory)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    ap.add_argument("--render", action="store_true", help="run nothing: rewrite the Markdown (and the targets) "
                                                          "from --out's JSON")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "OP"), help=argparse.SUPPRESS)
    ap.add_argument("--child-settings", help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, json.loads(args.child_settings), args.cache)
        return

    if args.render:
        from _common import write_md

        result = json.loads(args.out.read_text())
        result["targets"] = targets(result["models"])
        args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
        write_md(args.out.with_suffix(".md"), markdown(result))
        print(markdown(result))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    for name, given, known in (("model", models, MODELS), ("operation", ops, OPS)):
        bad = [v for v in given if v not in known]
        if bad:
            ap.error(f"unknown {name} {', '.join(bad)} (expected {', '.join(known)})")
    ops = ["clean"] + [o for o in OPS if o in ops and o != "clean"]

    import torch
    from _common import log, machine, write_md

    torch.set_num_threads(args.threads)
    result = {"machine": machine(), "settings": {"quick": args.quick, "threads": args.threads, "sweep_eps": SWEEP_EPS,
                                                 "estimate_chip": CHIP, "campaign_chip": CAMPAIGN_CHIP},
              "models": {}}
    if args.merge and args.out.exists():
        result["models"] = json.loads(args.out.read_text()).get("models", {})
    max_rss = args.max_rss_mib or _proc_kib_total() / 2 / 1024
    result["settings"].update(timeout_x=args.timeout_x, timeout_floor=args.timeout_floor, max_rss_mib=max_rss)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        for model in models:
            s = settings_for(model, args)
            entry = {"settings": {k: v for k, v in s.items() if k != "threads"}, "ops": {}}
            if args.merge and model in result["models"] and "clean" in ops:  # rerun some ops, keep the others
                entry["ops"] = {k: v for k, v in result["models"][model].get("ops", {}).items() if k not in ops}
                entry = {**result["models"][model], **entry}
            result["models"][model] = entry
            for i, op in enumerate(ops):
                log(f"[scale] {model}: {op} ({i + 1}/{len(ops)}) ...")
                clean = entry["ops"].get("clean", {})
                timeout = (None if op == "clean" or not args.timeout_x or "seconds" not in clean
                           else max(args.timeout_floor, args.timeout_x * clean["seconds"]))
                r = measure(model, op, s, Path(cache), timeout, max_rss)
                if r.get("stopped") and op == "campaign":
                    r["trials"] = s["trials"]
                if "error" in r:
                    log(f"[scale] {model}: {op} {'stopped' if r.get('stopped') else 'FAILED'}: {r['error']}")
                else:
                    entry.update(params=r["params"], data=r["data"], task=r["task"])
                    log(f"[scale] {model}: {op} {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
                entry["ops"][op] = r
                derive(entry["ops"])
                result["targets"] = targets(result["models"])
                result["seconds"] = time.perf_counter() - t0
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")  # after every child
            entry.setdefault("params", None)
            entry.setdefault("data", "?")
    md = markdown(result)
    write_md(args.out.with_suffix(".md"), md)
    print(md)
    if any("error" in r and not r.get("stopped") for m in result["models"].values() for r in m["ops"].values()):
        sys.exit(1)  # a child failed (not merely stopped at its bound): the table is written; make notices


if __name__ == "__main__":
    main()
