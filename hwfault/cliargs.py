"""The command line's shared parts: the options several commands take, output-path checks, and the
translation of ``--task``/``--tolerance``/``--output``/``--weights``/``--device`` into an analysis's arguments."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from . import files, report, validate
from .errors import ConstraintError, HwfaultError



parse_eps = validate.parse_eps


def _outs(json_path: Optional[str] = None, plot: Optional[str] = None, *, report_path: Optional[str] = None,
          json_what: str = "--json", plot_what: str = "--plot") -> None:
    """Check the output paths of a command before its work starts."""
    files.check_output(json_path, what=json_what, allow_stdout=True)
    files.check_output(plot, what=plot_what, suffixes=files.FIGURE_SUFFIXES)
    files.check_output(report_path, what="--report", suffixes=files.REPORT_SUFFIXES)


def _search_n(text: str) -> Optional[int]:
    """``--search-inputs``: a positive count, or all."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise ConstraintError(f"expected --search-inputs as a positive integer or 'all', got '{text}'") from None
    if n <= 0:
        raise ConstraintError(f"expected --search-inputs > 0, got {n}")
    return n


def parse_n(text: str) -> Optional[int]:
    if text.strip().lower() in ("all", "k"):
        return None
    try:
        n = int(text)
    except ValueError:
        raise ConstraintError(f"expected --n as a positive integer or 'all', got '{text}'") from None
    if n <= 0:
        raise ConstraintError(f"expected n > 0 (number of corrupted parameters), got {n}")
    return n


def _outputs(result, table, json_path: Optional[str], plot_path: Optional[str], plot) -> None:
    report.print_table(table)
    if json_path:
        report.write_json(result.to_dict(), json_path)
        if json_path != "-":
            print(f"wrote {json_path}", file=sys.stderr)
    if plot_path:
        plot(result, plot_path)
        print(f"wrote {plot_path}", file=sys.stderr)


MODEL = typer.Option(..., "--model", "-m", help="Zoo name, hwfault .safetensors checkpoint, torch.export .pt2, .onnx, "
                                                 "or Python source package.module:factory (with --weights).")
DATA = typer.Option(None, "--data", "-d", help="digits, mnist1d, pycode, an .npz with x and y, an x*.npy file or a "
                                               "directory of .npy/.npz shards (default: the zoo model's data).")
TASK = typer.Option(None, "--task", help="classification, lm or regression (default: the zoo model's, else classification).")
TOLERANCE = typer.Option(None, "--tolerance", help="regression: an output that moves by more than this is an SDC (default 0.1).")
OUTPUT = typer.Option(None, "--output", help="The model output to score when it returns several: a name or an index.")
WEIGHTS = typer.Option(None, "--weights", help="A .safetensors state dict for --model package.module:factory.")
PARAMS = typer.Option(None, "--params", help="Comma-separated name globs of the parameters to corrupt (default: all).")
TYPES = typer.Option(None, "--types", help="Comma-separated component types: conv, linear, norm, embedding, attention, recurrent, elementwise, bias, weight.")
LAYERS = typer.Option(None, "--layers", help="Comma-separated layer positions (0 = first; -1 = last).")
PROBE = typer.Option(None, "--probe", help="Take the gradient on this split (train or test) instead of the evaluation data.")


def _check_device(value: Optional[str]) -> Optional[str]:
    """``--device`` is checked while the command line is parsed, before any work (torch is imported
    only when the option is given)."""
    if value is not None:
        from .devices import check_device

        check_device(value)
    return value


PROVE = typer.Option(True, "--prove/--no-prove", help="Skip the inputs that a bound proves keep their top-1 class (classification; SDC, DUE and accuracy stay exact; such a trial's loss is then not computed).")
DEVICE = typer.Option(None, "--device", callback=_check_device,
                      help="Where the model runs: auto (a GPU if there is one), cpu, cuda, cuda:N or mps (default: cpu).")


def _cpu_only(device: Optional[str], what: str) -> None:
    """A note when ``--device`` asks for more than a command uses (its work runs on the CPU)."""
    if device is not None and device.strip().lower() not in ("cpu", "cpu:0"):
        print(f"note: {what} runs on the CPU; --device {device} is not used", file=sys.stderr)


def _data_for(model: str, data: Optional[str]) -> str:
    from .inputs import default_data

    return default_data(model, data)


def _task_kw(task: Optional[str], tolerance: Optional[float], output: Optional[str] = None,
             weights: Optional[str] = None, device: Optional[str] = None) -> dict:
    """The task, tolerance, output, weights and device options as an analysis's keyword arguments."""
    from .tasks import get_task

    if task is not None:
        get_task(task)  # an unknown task name fails here, before any work
    if tolerance is not None:
        if task not in (None, "regression"):
            raise HwfaultError(f"--tolerance goes with --task regression, not --task {task}")
        validate.number("--tolerance", tolerance, lo=0.0)
        task = "regression"
    out = output
    if output is not None and output.lstrip("-").isdigit():
        out = int(output)
    return {"task": task, "tolerance": tolerance, "output": out, "weights": weights, "device": device}


CHIP = typer.Option(..., "--chip", "-c", help="A chip preset name (hwfault chips list) or a chip TOML file.")
WORKERS = typer.Option(None, "--workers", help="Run the trials on a local Dask cluster of N worker processes.")
SCHEDULER = typer.Option(None, "--scheduler", help="Run the trials on an existing Dask cluster (tcp://host:port).")


def _certifiable(model: str, task: Optional[str]) -> None:
    """certify bounds classification margins: a one-line error for any other task."""
    from .analyses.estimate import no_bound_reason
    from .inputs import resolve_task

    t = resolve_task(task, model)
    if t.name != "classification":
        raise HwfaultError(f"certify: {no_bound_reason(t)}")
