"""Table 2 of Sun et al. (AAAI 2021) on the zoo: base vs hardened models under parameter corruption.

    .venv/bin/python bench/seed_table2.py [--models digits-cnn,mnist1d-resnet] [--eps 0.1,0.3,1]
                                          [--epochs 10] [--trials 30]

For each model: the base checkpoint, and the corruption-resistant methods fine-tuned from it
(``crt``: gradient-norm penalty, Eq. 16; ``crt-star``: the Eq. 13 mix with the gradient-based virtual
corruption; ``apd``: the multi-step defence), plus the shipped chip-hardened checkpoints
(``models/<model>-hard-<chip>.safetensors``, from bench/harden_zoo.py). Columns: clean accuracy,
accuracy under the one-step gradient-based L2 corruption of all parameters (Eq. 10) and under the
10-step corruption at each eps, and the Monte-Carlo mean accuracy on the two chip presets (the same
chips for every row). Writes bench/results/table2.json and table2.md.
"""

from __future__ import annotations

import argparse
import json
import time

import hwfault
from hwfault import load_data, load_model
from hwfault.analyses.estimate import monte_carlo
from hwfault.faults import Chip
from hwfault.analyses.harden import HardenConfig, harden
from hwfault.spec import load_chip
from hwfault.zoo import models_dir

from _common import RESULTS, add_common_args, data_of, log, machine, md_table, setup, write_md

METHODS = ("crt", "crt-star", "apd")
CHIPS = ("rram-4bit", "int8-sram-0.5v")


def row_for(model, test, eps, trials, seed) -> dict:
    sw = hwfault.sweep(model, test, epsilons=eps, norm=2, methods=["gradient", "multistep"], steps=10)
    out = {"clean": sw.clean["accuracy"],
           "gradient": {f"{e:g}": sw.method("gradient")[e].accuracy for e in eps},
           "multistep": {f"{e:g}": sw.method("multistep")[e].accuracy for e in eps}, "monte_carlo": {}}
    for c in CHIPS:
        chip = Chip.build(load_chip(c), model)
        out["monte_carlo"][c] = monte_carlo(chip, model, test, trials=trials, seed=seed)["accuracy_mean"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, models="digits-cnn,mnist1d-resnet", eps="0.1,0.3,1", out=RESULTS / "table2.json")
    ap.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per method")
    ap.add_argument("--trials", type=int, default=30, help="Monte-Carlo chips per preset")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = setup(ap, args)
    res = {"machine": machine(), "eps": args.eps, "epochs": args.epochs, "trials": args.trials, "models": {}}
    md = []
    for name in args.models:
        data = data_of(name)
        train, test = load_data(data, "train"), load_data(data)
        base = load_model(name)
        rows = {"base": {"model": name, **row_for(base, test, args.eps, args.trials, args.seed)}}
        log(f"{name}: base done ({time.perf_counter() - t0:.0f} s)")
        bs = 128 if data == "mnist1d" else 64
        for meth in METHODS:
            r = harden(base, train, HardenConfig(method=meth, epochs=args.epochs, batch_size=bs, seed=args.seed))
            rows[meth] = {"model": f"{name} + {meth}", "config": r.config.to_dict(), "train_seconds": round(r.seconds, 1),
                          **row_for(r.model, test, args.eps, args.trials, args.seed)}
            log(f"{name}: {meth} done ({r.seconds:.0f} s training, {time.perf_counter() - t0:.0f} s total)")
        for c in CHIPS:
            path = models_dir() / f"{name}-hard-{c}.safetensors"
            if path.is_file():
                rows[f"hardened for {c}"] = {"model": path.name, **row_for(load_model(path), test, args.eps,
                                                                                args.trials, args.seed)}
        res["models"][name] = rows
        header = (["model", "clean"] + [f"one-step eps={e:g}" for e in args.eps] + [f"10-step eps={e:g}" for e in args.eps]
                  + [f"MC {c}" for c in CHIPS])
        body = [[f"{key}", f"{100 * r['clean']:.1f}"] + [f"{100 * r['gradient'][f'{e:g}']:.1f}" for e in args.eps]
                + [f"{100 * r['multistep'][f'{e:g}']:.1f}" for e in args.eps]
                + [f"{100 * r['monte_carlo'][c]:.1f}" for c in CHIPS] for key, r in rows.items()]
        md.append(f"**{name}** (accuracy %, L2 corruption of all parameters; {args.trials} Monte-Carlo chips)\n\n"
                  + md_table(header, body))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    text = "\n\n".join(md)
    write_md(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
