"""Peak memory of a clean evaluation against the number of inputs (issue 13).

Writes N inputs of shape (3, 32, 32) float32 (12 KiB each: 20,000 of them are 234 MiB) as ``x.npy``
/ ``y.npy`` in a directory, and evaluates a small CNN on it in a fresh process per N, reading the
child's peak resident set (``VmHWM`` in /proc/self/status: the high-water mark of the child's own
address space; ``ru_maxrss`` would carry over the parent's peak across fork and exec). Two readers, same model and data:

- ``hwfault (lazy)``: ``hw.load_data(dir)``, an ArrayDataset that memory-maps one batch at a time;
- ``in memory``: the arrays read whole (``np.load``) into a TensorDataset, as before issue 13.

The target: hwfault's peak at 20,000 inputs within 1.2x of its peak at 1,000. Writes
bench/results/memory_eval.json and .md and prints the table.

    python bench/memory_eval.py [--sizes 1000,20000] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, log, machine, md_table, write_md  # noqa: E402

CHILD = r"""
import sys, time
import numpy as np, torch
from torch import nn
from torch.utils.data import TensorDataset
import hwfault as hw

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


torch.set_num_threads(1)
path, mode, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                      nn.Linear(8 * 8 * 8, 10)).eval()
before = hwm()
t0 = time.perf_counter()
if mode == "lazy":
    data = hw.load_data(path)
else:
    data = TensorDataset(torch.from_numpy(np.load(path + "/x.npy")), torch.from_numpy(np.load(path + "/y.npy")))
r = hw.evaluate(model, data, batch_size=batch)
seconds = time.perf_counter() - t0
peak = hwm()
print(f"{before} {peak} {r.accuracy} {seconds}")
"""


def make(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(n, 3, 32, 32))
    for i in range(0, n, 1000):  # written in chunks: the bench itself stays small
        x[i:i + 1000] = rng.random((min(1000, n - i), 3, 32, 32), dtype=np.float32)
    x.flush()
    del x
    np.save(folder / "y.npy", rng.integers(0, 10, n))


def measure(folder: Path, mode: str, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode, str(batch)], capture_output=True,
                         text=True, check=True).stdout.split()
    before, peak, acc, seconds = int(out[0]), int(out[1]), float(out[2]), float(out[3])
    return {"rss_before_mib": before / 1024, "peak_rss_mib": peak / 1024, "accuracy": acc, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,20000", help="comma-separated numbers of inputs (first = the base)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=RESULTS / "memory_eval.json")
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / str(n)
            folder.mkdir()
            make(folder, n)
            for mode in ("lazy", "memory"):
                log(f"evaluating {n:,} inputs ({mode})")
                rows.append({"n": n, "mode": mode, "data_mib": n * 3 * 32 * 32 * 4 / 2**20, **measure(folder, mode, args.batch)})
    base = {r["mode"]: r["peak_rss_mib"] for r in rows if r["n"] == sizes[0]}
    for r in rows:
        r["peak_vs_base"] = r["peak_rss_mib"] / base[r["mode"]]
    top = max(sizes)
    lazy = next(r for r in rows if r["n"] == top and r["mode"] == "lazy")
    result = {"machine": machine(), "batch": args.batch, "rows": rows,
              "target": f"hwfault peak RSS at {top:,} inputs within 1.2x of {sizes[0]:,}",
              "ratio": lazy["peak_vs_base"], "met": lazy["peak_vs_base"] <= 1.2}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = md_table(["inputs", "reader", "data (MiB)", "peak RSS (MiB)", f"vs {sizes[0]:,}", "seconds"],
                     [[f"{r['n']:,}", "hwfault (lazy .npy)" if r["mode"] == "lazy" else "in memory (np.load)",
                       f"{r['data_mib']:.0f}", f"{r['peak_rss_mib']:.0f}", f"{r['peak_vs_base']:.2f}x",
                       f"{r['seconds']:.1f}"] for r in rows])
    text = (f"# Peak memory of a clean evaluation\n\n{table}\n\nTarget: {result['target']}: "
            f"{lazy['peak_vs_base']:.2f}x ({'met' if result['met'] else 'NOT met'}). Batch {args.batch}; "
            f"one process per row; {result['machine']['date']}.\n")
    write_md(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
