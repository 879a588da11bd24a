"""Helpers shared by the bench scripts: argument parsing, machine record, logging, markdown."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

import hwfault
from hwfault import zoo

RESULTS = Path(__file__).resolve().parent / "results"


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_common_args(parser, *, models: str, eps: str, out: Path) -> None:
    parser.add_argument("--models", type=names, default=names(models), help="comma-separated zoo names")
    parser.add_argument("--eps", type=floats, default=floats(eps), help="comma-separated corruption sizes")
    parser.add_argument("--out", type=Path, default=out, help="JSON output (markdown goes beside it, .md)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a small shared CPU: these models are tiny)")


def setup(parser, args) -> float:
    """Set torch threads, check the model names (argparse error, not a traceback); return the start time."""
    torch.set_num_threads(args.threads)
    try:
        for m in args.models:
            zoo.get_entry(m)
    except hwfault.HwfaultError as e:
        parser.error(str(e))
    return time.perf_counter()


def data_of(model: str) -> str:
    return zoo.get_entry(model).data


def machine() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
            "python": platform.python_version(), "torch": torch.__version__, "hwfault": hwfault.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---"] + ["--:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in lines)


def write_md(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")
