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


# ----------------------------------------------------------------------------- hwfault protect


def parse_budgets(text: str) -> list:
    """``--budget``: comma-separated shares of the stored weight bits (0.005, or 0.5%) or numbers of
    bits (integers, 1000); a one-line error for anything else."""
    import re

    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if part.endswith("%"):
                v = float(part[:-1]) / 100
            elif re.fullmatch(r"\+?\d+", part):
                v = int(part)
            else:
                v = float(part)
        except ValueError:
            v = None
        ok = v is not None and ((isinstance(v, int) and v >= 1) or (isinstance(v, float) and 0 < v <= 1))
        if not ok:
            raise ConstraintError(f"expected --budget as shares of the stored weight bits in (0, 1] (0.005 or 0.5%) "
                                  f"or numbers of bits (1000), comma-separated, got '{part}'")
        out.append(v)
    return out


def parse_strategies(text: str) -> list[str]:
    from .errors import did_you_mean
    from .spec.protection import STRATEGIES

    out = [s.strip() for s in text.split(",") if s.strip()]
    for s in out:
        if s not in STRATEGIES:
            raise ConstraintError(f"unknown strategy '{s}' in --strategies{did_you_mean(s, STRATEGIES)}")
    if not out:
        raise ConstraintError(f"expected --strategies as some of {', '.join(STRATEGIES)}, got '{text}'")
    return out


def protect_command(
    model: str = MODEL,
    data: Optional[str] = DATA,
    chip: str = CHIP,
    budget: Optional[str] = typer.Option(None, "--budget", help="Comma-separated budgets of protected weight bits: shares (0.005 or 0.5%) or numbers of bits (1000)."),
    strategies: str = typer.Option("ranked,random,magnitude", "--strategies", help="Which bits: ranked (the worst-case ranking, |gradient x bit damage| at the stored weights and, for half the budget, at the unprotected chip's worst-case point), random, magnitude (the largest weights' top bits)."),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="ecc (SECDED per 64-bit word) or tmr (default: the chip's [[protection]] ecc/tmr entry, else tmr)."),
    trials: int = typer.Option(50, "--trials", help="Monte-Carlo chips per row (the same chips for every row)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Monte-Carlo chips and of the random choice."),
    coverage: Optional[float] = typer.Option(None, "--coverage", help="Coverage of the worst-case sets (default: the spec's)."),
    no_worst_case: bool = typer.Option(False, "--no-worst-case", help="Skip the worst-case searches."),
    search_inputs: str = typer.Option("64", "--search-inputs", help="Evaluation inputs the worst-case searches run on, or all."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the results as JSON here ('-' = stdout)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Draw accuracy vs budget, one curve per strategy, here."),
    task: Optional[str] = TASK,
    tolerance: Optional[float] = TOLERANCE,
    output: Optional[str] = OUTPUT,
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
):
    """Choose protections under a budget (ECC/TMR on the most damaging weight bits, against random and
    magnitude choice) and evaluate them with the chip's own: accuracy, SDC, DUE, worst case, cost."""
    budgets = parse_budgets(budget) if budget is not None else []
    strats = parse_strategies(strategies)
    if scheme is not None and scheme not in ("ecc", "tmr"):
        from .errors import did_you_mean

        raise ConstraintError(f"unknown --scheme '{scheme}'{did_you_mean(scheme, ('ecc', 'tmr'))}")
    validate.trials("--trials", trials)
    validate.seed(seed)
    if coverage is not None:
        validate.probability("--coverage", coverage)
    _outs(json_path, plot)
    from .analyses.protect import protect
    from .report.protect import plot_protect, protect_table

    result = protect(model, _data_for(model, data), chip, budgets=budgets, strategies=strats, scheme=scheme,
                     trials=trials, seed=seed, coverage=coverage, worst_case=not no_worst_case,
                     search_inputs=_search_n(search_inputs), **_task_kw(task, tolerance, output, weights, device))
    _outputs(result, protect_table(result.to_dict()), json_path, plot, lambda r, p: plot_protect(r.to_dict(), p))
