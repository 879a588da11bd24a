"""The zoo language model (pycode-charlm) through every analysis: what the README's LM figures are.

- sweep: L2 corruption of all parameters at eps 0.3, 1, 3 (random, 5 trials; gradient; multi-step);
- estimate on ``rram-4bit`` (20 Monte-Carlo chips, 5 ascent steps, no per-fault breakdown);
- a 100-trial campaign on ``int8-sram-0.5v`` (SDC over tokens);
- bits: int8 flips to ten times the quantised perplexity, on the first 200 test windows;
- export: ONNX parity on the (B, T, V) logits.

Writes bench/results/lm_zoo.json and .md and prints the Markdown.

    python bench/lm_zoo.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hwfault as hw  # noqa: E402
from hwfault.report import write_json  # noqa: E402

from _common import RESULTS, log, machine, md_table, write_md  # noqa: E402

MODEL = "pycode-charlm"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "lm_zoo.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="rerun only these parts (comma-separated: sweep, estimate, campaign, "
                                                 "bits, export), keeping the others from the last JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = hw.load_data("pycode")
    only = None if args.only is None else set(args.only.split(","))
    out: dict = {"machine": machine(), "model": MODEL}
    timed = {}
    if only is not None and args.out.exists():
        old = json.loads(args.out.read_text())
        out.update({k: v for k, v in old.items() if k not in ("machine", "seconds")})
        timed.update(old.get("seconds", {}))

    def run(name, fn):
        if only is not None and name not in only:
            return None
        log(f"[lm_zoo] {name}")
        t = time.perf_counter()
        r = fn()
        timed[name] = round(time.perf_counter() - t, 1)
        return r

    s = run("sweep", lambda: hw.sweep(MODEL, "pycode", epsilons=[0.3, 1.0, 3.0], trials=5, seed=0))
    if s is not None:
        out["sweep"] = s.to_dict()
    e = run("estimate", lambda: hw.estimate(MODEL, "pycode", "rram-4bit", trials=20, steps=5, per_fault=False,
                                            severities=()))
    if e is not None:
        out["estimate"] = e.to_dict()
    c = run("campaign", lambda: hw.campaign(MODEL, "pycode", "int8-sram-0.5v", trials=100))
    if c is not None:
        out["campaign"] = c.to_dict()
    x, y = data.tensors
    small = TensorDataset(x[:200], y[:200])
    b = run("bits", lambda: hw.bits(MODEL, small, format="int8", until_factor=10, random_runs=1, max_flips=40))
    if b is not None:
        out["bits"] = b.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        rep = run("export", lambda: hw.export_model(MODEL, "pycode", Path(tmp) / "lm.onnx"))
    if rep is not None:
        out["export"] = {"passed": rep.passed, "max_abs_delta": rep.max_abs_delta, "agreement": rep.agreement}
    out["seconds"] = timed
    write_json(out, args.out)

    sd = out["sweep"]
    by = {(r["method"], r["eps"]): r["perplexity"] for r in sd["results"]}
    sweep_md = md_table(["eps", "random", "gradient", "multi-step"],
                        [[f"{ep:g}", *(f"{by[(m, ep)]:.3g}" for m in ("random", "gradient", "multistep"))]
                         for ep in (0.3, 1.0, 3.0)])
    ed, cd, bd = out["estimate"], out["campaign"], out["bits"]
    md = "\n\n".join([
        f"# {MODEL} through every analysis\n\nClean test perplexity {sd['clean']['perplexity']:.3f} "
        f"(token accuracy {100 * sd['clean']['token_accuracy']:.2f}%), 1,207 test windows.",
        f"## sweep: perplexity under L2 corruption of all {sd['k']:,} parameters ({timed['sweep']} s)\n\n{sweep_md}",
        f"## estimate on rram-4bit ({timed['estimate']} s)\n\nstored {ed['quantized']['perplexity']:.3f}; Monte-Carlo "
        f"mean {ed['random']['perplexity_mean']:.3g}, worst 1% {ed['random']['perplexity_p99']:.3g}; one-step worst case "
        f"{ed['worst_case']['one_step']['perplexity']:.3g}; certified floor: {ed['certified']['reason'][:60]}...",
        f"## campaign on int8-sram-0.5v, 100 trials ({timed['campaign']} s)\n\nSDC rate {cd['overall']['sdc_rate']:.2f}; "
        f"correctly predicted tokens changed per trial {100 * cd['overall']['sdc_inputs_mean']:.1f}%; mean loss "
        f"{cd['overall']['loss_mean']:.3f} nats vs golden {cd['golden']['loss']:.3f}; critical SDC rate "
        f"{cd['overall']['critical_sdc_rate']:.2f}",
        f"## bits, int8, first 200 test windows ({timed['bits']} s)\n\n{bd['flips']} worst-case flips take perplexity "
        f"from {bd['quantized']['perplexity']:.3f} to {bd['history'][-1]:.3g} (target {bd['until']:.3g}, 10x); random "
        f"flips needed {bd['random_flips']:g}",
        f"## export ({timed['export']} s)\n\nparity {'passed' if out['export']['passed'] else 'FAILED'}: max |delta "
        f"logit| {out['export']['max_abs_delta']:.2g}, per-token agreement {100 * out['export']['agreement']:.2f}%",
        f"Total {time.perf_counter() - t0:.0f} s; {out['machine']['date']}.",
    ])
    write_md(args.out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
