"""The ``hwfault`` command line: parse, one library call, print a table (stderr) and write JSON/plots.

Bad input of any kind ends in one line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException

from . import __version__, files, progress, report, validate
from .errors import ConstraintError, HwfaultError
from .runtime import tune_allocator

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Hardware-fault simulation for neural-network accelerators.")
zoo_app = typer.Typer(no_args_is_help=True, help="The reference model zoo.")
app.add_typer(zoo_app, name="zoo")
chips_app = typer.Typer(no_args_is_help=True, help="Chip specs: shipped presets and your own TOML files.")
app.add_typer(chips_app, name="chips")
results_app = typer.Typer(no_args_is_help=True, help="Campaign journals: show and export results.")
app.add_typer(results_app, name="results")


def _version(value: bool):
    if value:
        print(f"hwfault {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          debug: bool = typer.Option(False, "--debug", help="On an internal error, print the full traceback.")):
    """Hardware-fault simulation for neural-network accelerators."""


from .cliargs import (CHIP, DATA, DEVICE, LAYERS, MODEL, OUTPUT, PARAMS, PROBE, PROVE, SCHEDULER, TASK, TOLERANCE,  # noqa: F401
                      TYPES, WEIGHTS, WORKERS, _certifiable, _cpu_only, _data_for, _outputs, _outs, _task_kw,
                      _search_n, parse_eps, parse_n, protect_command)
app.command("protect")(protect_command)


# ----------------------------------------------------------------------------- commands


@app.command()
def sweep(
    model: str = MODEL,
    data: Optional[str] = DATA,
    norm: str = typer.Option("2", "--norm", "-p", help="p of the L_p constraint: a number >= 1 or inf."),
    eps: str = typer.Option("0.01,0.1,1", "--eps", help="Comma-separated corruption sizes ||a||_p."),
    n: str = typer.Option("all", "--n", help="Most parameters changed (||a||_0 <= n), or 'all'."),
    params: Optional[str] = PARAMS,
    types: Optional[str] = TYPES,
    layers: Optional[str] = LAYERS,
    methods: str = typer.Option("random,gradient,multistep", "--methods", help="Any of random, gradient, multistep."),
    trials: int = typer.Option(10, "--trials", help="Random corruptions per eps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random corruptions."),
    steps: int = typer.Option(10, "--steps", help="Multi-step: ascent steps."),
    step_size: Optional[float] = typer.Option(None, "--step-size", help="Multi-step: step budget (default 1.5 eps / steps)."),
    probe: Optional[str] = PROBE,
    antithetic: bool = typer.Option(False, "--antithetic", help="Random: pair each direction with its negation."),
    float64: bool = typer.Option(False, "--float64", help="Evaluate in float64 (for loss changes below float32 round-off)."),
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    slopes: bool = typer.Option(False, "--slopes", help="Print the log-log slope of loss change vs eps per method (Theorem 1)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the results as JSON here ('-' = stdout)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Draw accuracy vs eps per method here (.png/.svg/.pdf)."),
    task: Optional[str] = TASK,
    tolerance: Optional[float] = TOLERANCE,
    output: Optional[str] = OUTPUT,
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
):
    """Accuracy under random vs gradient-based vs multi-step parameter corruption, over eps."""
    from .analyses.sweep import sweep as run

    validate.trials("--trials", trials)
    validate.seed(seed)
    validate.integer("--steps", steps, lo=1)
    if step_size is not None:
        validate.positive("--step-size", step_size)
    _outs(json_path, plot)
    result = run(model, _data_for(model, data), epsilons=parse_eps(eps), norm=norm, n=parse_n(n), params=params,
                 types=types, layers=layers, methods=methods, trials=trials, seed=seed, probe=probe, steps=steps,
                 step_size=step_size, antithetic=antithetic, float64=float64, workers=workers, scheduler=scheduler,
                 **_task_kw(task, tolerance, output, weights, device))
    _outputs(result, report.sweep_table(result), json_path, plot, report.plot_sweep)
    if slopes:
        found = result.slopes()
        print("log-log slope of loss change vs eps:   " + ("   ".join(f"{m} {v:.2f}" for m, v in found.items())
                                                             or "none (three eps with a positive loss change needed)"),
              file=sys.stderr)


@app.command("probe")
def probe_cmd(
    model: str = MODEL,
    data: Optional[str] = DATA,
    by: str = typer.Option("component", "--by", help="Group parameters by component type or by layer."),
    norm: str = typer.Option("inf", "--norm", "-p", help="p of the L_p constraint: a number >= 1 or inf."),
    eps: str = typer.Option(..., "--eps", help="Comma-separated corruption sizes."),
    n: str = typer.Option("10", "--n", help="Most parameters changed per group, or 'all'."),
    params: Optional[str] = PARAMS,
    types: Optional[str] = TYPES,
    layers: Optional[str] = LAYERS,
    probe: Optional[str] = PROBE,
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the results as JSON here ('-' = stdout)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Draw the group x eps accuracy heatmap here."),
    task: Optional[str] = TASK,
    tolerance: Optional[float] = TOLERANCE,
    output: Optional[str] = OUTPUT,
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
):
    """Vulnerability probe: gradient-based corruption restricted to each component type or layer."""
    from .analyses.sweep import probe as run

    if by not in ("component", "layer"):
        raise HwfaultError(f"expected --by component or layer, got '{by}'")
    _outs(json_path, plot)
    result = run(model, _data_for(model, data), epsilons=parse_eps(eps), by=by, norm=norm, n=parse_n(n),
                 params=params, types=types, layers=layers, probe=probe, **_task_kw(task, tolerance, output, weights, device))
    _outputs(result, report.probe_table(result), json_path, plot, report.plot_probe)


@zoo_app.command("list")
def zoo_list(json_out: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout.")):
    """List the zoo models with their data, size and accuracy."""
    from .zoo import get_entry, list_models, model_card

    rows = []
    for name in list_models():
        e, card = get_entry(name), model_card(name)
        rows.append({"name": name, "data": e.data, "description": e.description,
                     "parameters": card.get("parameters"), "test_accuracy": card.get("test_accuracy"),
                     "trained": bool(card), "task": getattr(e, "task", "classification"),
                     **({"test_perplexity": card["test_perplexity"]} if "test_perplexity" in card else {})})
    if json_out:
        report.write_json({"models": rows}, "-")
        return
    report.print_table(report.zoo_table(rows))


@zoo_app.command("train")
def zoo_train(
    name: str = typer.Argument(..., help="Zoo model name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the checkpoint and card (default: models/)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed (default: the zoo recipe's)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default: the zoo recipe's)."),
):
    """Train a zoo model from scratch, deterministically, and write its checkpoint and model card."""
    from .zoo import get_entry, train

    entry = get_entry(name)
    total = entry.epochs if epochs is None else epochs
    with progress.task(f"training {name}", total) as advance:
        card = train(name, out_dir=out, seed=seed, epochs=epochs, on_epoch=lambda e, loss: advance(1))
    score = (f"test perplexity {card['test_perplexity']:.3f} ({100 * card['test_accuracy']:.2f}% tokens)"
             if "test_perplexity" in card else f"test accuracy {100 * card['test_accuracy']:.2f}%")
    print(f"{name}: {score}, {card['parameters']:,} parameters, "
          f"{card['train_seconds']} s -> {(out or Path('models')) / (name + '.safetensors')}", file=sys.stderr)




@app.command()
def estimate(
    model: str = MODEL,
    data: Optional[str] = DATA,
    chip: str = CHIP,
    coverage: Optional[float] = typer.Option(None, "--coverage", help="Probability that the worst-case set holds a chip's faults (default: the spec's)."),
    trials: int = typer.Option(100, "--trials", help="Monte-Carlo chips."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Monte-Carlo chips."),
    steps: int = typer.Option(10, "--steps", help="Multi-step worst case: ascent steps."),
    probe: Optional[str] = PROBE,
    no_breakdown: bool = typer.Option(False, "--no-breakdown", help="Skip the per-fault breakdown and severity curve."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the results as JSON here ('-' = stdout)."),
    report_path: Optional[str] = typer.Option(None, "--report", help="Write an HTML (.html) or Markdown (.md) report with plots."),
    certify_method: str = typer.Option("ibp", "--certify", help="Certified floor over the covering set: ibp, crown, auto, bab or none."),
    search_inputs: str = typer.Option("64", "--search-inputs", help="Evaluation inputs the worst-case searches run on (evenly spaced), or all; each point found is scored on all."),
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    task: Optional[str] = TASK,
    tolerance: Optional[float] = TOLERANCE,
    output: Optional[str] = OUTPUT,
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
):
    """How a model fares on a chip: Monte-Carlo over its faults vs the worst case inside their covering set."""
    from .certification import METHODS
    from .analyses.estimate import estimate as run

    if certify_method not in METHODS + ("none",):
        raise ConstraintError(f"expected --certify {', '.join(METHODS)} or none, got '{certify_method}'")
    validate.trials("--trials", trials)
    validate.seed(seed)
    validate.integer("--steps", steps, lo=1)
    if coverage is not None:
        validate.probability("--coverage", coverage)
    _outs(json_path, report_path=report_path)
    result = run(model, _data_for(model, data), chip, coverage=coverage, trials=trials, seed=seed, steps=steps,
                 probe=probe, per_fault=not no_breakdown, severities=() if no_breakdown else (0.25, 0.5, 1.0, 2.0, 4.0),
                 certified=None if certify_method == "none" else certify_method, workers=workers, scheduler=scheduler,
                 search_inputs=_search_n(search_inputs),
                 **_task_kw(task, tolerance, output, weights, device))
    _outputs(result, report.estimate_table(result), json_path, report_path, report.write_report)


@app.command()
def harden(
    model: str = MODEL,
    data: Optional[str] = DATA,
    chip: Optional[str] = typer.Option(None, "--chip", "-c", help="Chip to harden for (required by noise; intN chips train with brevitas QAT)."),
    method: str = typer.Option(..., "--method", help="crt, crt-star, apd, noise or randbet."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs over the train split."),
    eps: Optional[float] = typer.Option(None, "--eps", help="Virtual corruption size, L2 over all parameters (crt-star, apd)."),
    lam: Optional[float] = typer.Option(None, "--lambda", help="Weight of the gradient-norm penalty (crt)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of the corrupted/faulty loss (crt-star, noise, randbet)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Corruption steps K (apd)."),
    ber: Optional[float] = typer.Option(None, "--ber", help="Training bit error rate (randbet; default 0.01)."),
    clip: Optional[float] = typer.Option(None, "--clip", help="Weight clipping w_max (randbet; default 0.1)."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (AdamW, cosine schedule)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Minibatch size."),
    seed: int = typer.Option(0, "--seed", help="Seed of the minibatches and the training faults."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Train a fresh model of the architecture instead of fine-tuning."),
    no_qat: bool = typer.Option(False, "--no-qat", help="Train float weights even for an intN chip."),
    trials: int = typer.Option(100, "--trials", help="Monte-Carlo chips in the hardening report."),
    out: str = typer.Option(..., "--out", "-o", help="Hardened checkpoint (.safetensors; .pt2 for torch.export models)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Hardening report JSON (default: beside --out, .hardening.json)."),
    plot_path: Optional[str] = typer.Option(None, "--plot", help="Hardening figure (default: beside --out, .hardening.png)."),
    train_on_eval: bool = typer.Option(False, "--train-on-eval", help="Train on the evaluation data when the data have no train split (the report says so)."),
    task: Optional[str] = TASK,
    tolerance: Optional[float] = TOLERANCE,
    device: Optional[str] = DEVICE,
):
    """Train a corruption-resistant model, then compare it with the base model on the chip."""
    import shlex

    from .analyses.harden import HardenConfig
    from .analyses.hardening import harden_checkpoint

    cfg = HardenConfig(method=method, epochs=epochs, eps=eps, lam=lam, alpha=alpha, steps=steps, ber=ber, clip=clip,
                       lr=lr, batch_size=batch_size, seed=seed, from_scratch=from_scratch)
    validate.trials("--trials", trials)
    _outs(json_path, plot_path)
    command = "hwfault " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and \
        sys.argv[0].endswith("hwfault") else f"hwfault harden --model {model} --method {method}"
    with progress.task(f"harden ({cfg.method})", cfg.epochs) as advance:
        run = harden_checkpoint(model, _data_for(model, data), cfg, out=out, chip=chip, qat=not no_qat, trials=trials,
                                train_on_eval=train_on_eval, command=command, on_epoch=lambda e, row: advance(1),
                                **_task_kw(task, tolerance, device=device),
                                on_note=lambda msg: print(f"note: {msg}", file=sys.stderr))
    h, b = run.hardened, run.base
    score = (f"test accuracy {100 * h.accuracy:.1f}%, base {100 * b.accuracy:.1f}%" if h.metric_name == "accuracy" else
             f"test {h.metric_name} {h.metric:.4g}, base {b.metric:.4g}")
    print(f"wrote {run.out} ({score})", file=sys.stderr)
    if run.report is None:
        print("no --chip: skipped the hardening report (pass --chip to compare base and hardened on a chip)", file=sys.stderr)
        return
    report.print_table(report.hardening_table(run.report))
    jp = json_path or str(run.out.with_suffix(".hardening.json"))
    report.write_json(run.report, jp)
    if jp != "-":
        print(f"wrote {jp}", file=sys.stderr)
    pp = plot_path or str(run.out.with_suffix(".hardening.png"))
    report.plot_hardening(run.report, pp)
    print(f"wrote {pp}", file=sys.stderr)


@app.command()
def export(
    model: str = MODEL,
    data: Optional[str] = DATA,
    chip: Optional[str] = typer.Option(None, "--chip", "-c", help="Chip the file is meant for: stored in the file with the robustness summary on it."),
    out: str = typer.Option(..., "--out", "-o", help="The ONNX file to write."),
    fmt: str = typer.Option("fp32", "--format", help="fp32 (torch.onnx); int8 (QCDQ through brevitas; the chip's intN on an intN chip, its intN-gG on a per-group one); block formats as hwfault's codes + DequantizeLinear: fp8_e4m3, fp8_e5m2 (opset 19), intN-gG e.g. int4-g128 (21), mxfp8_e4m3, mxfp8_e5m2, mxint8 (24)."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: 17 for fp32; 13 for int8 QCDQ, 14 if the model has attention)."),
    trials: int = typer.Option(50, "--trials", help="Monte-Carlo chips for the robustness summary (with --chip)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the export report as JSON here ('-' = stdout)."),
    task: Optional[str] = TASK,
    tolerance: Optional[float] = TOLERANCE,
    output: Optional[str] = OUTPUT,
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
):
    """Export to ONNX and check the file: onnx.checker, then onnxruntime parity against the torch model."""
    from .export import export_model

    validate.trials("--trials", trials)
    files.check_output(out, what="--out", suffixes=(".onnx",))
    _outs(json_path)
    rep = export_model(model, _data_for(model, data), out, fmt=fmt, opset=opset, chip=chip, trials=trials,
                       **_task_kw(task, tolerance, output, weights, device))
    report.print_table(report.export_table(rep))
    if json_path:
        report.write_json(rep.to_dict(), json_path)
    print(f"wrote {out}", file=sys.stderr)
    if not rep.passed:
        print(f"error: parity check failed: {'; '.join(rep.failures)}", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def certify(
    model: str = MODEL,
    data: Optional[str] = DATA,
    chip: Optional[str] = typer.Option(None, "--chip", "-c", help="Certify the chip's covering set (and, for intN chips, quantisation safety)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="inf (per-element box) or 2 (per-tensor L2 ball)."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Comma-separated perturbation sizes."),
    relative: Optional[str] = typer.Option(None, "--relative", help="eps relative to each 'tensor' (max|w| or ||w||) or 'element' (|w|)."),
    params: Optional[str] = typer.Option(None, "--params", help="Comma-separated name globs of the perturbed parameters (default: all)."),
    types: Optional[str] = TYPES,
    method: str = typer.Option("auto", "--method", help="ibp, crown, bab (CROWN + branch and bound) or auto (IBP, then CROWN where IBP fails, then branch and bound, in a time budget)."),
    time_budget: float = typer.Option(30.0, "--time-budget", help="auto and bab: seconds per eps; what is not reached keeps the looser bound."),
    coverage: Optional[float] = typer.Option(None, "--coverage", help="Coverage of the chip's covering set (default: the spec's)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the results as JSON here ('-' = stdout)."),
    plot_path: Optional[str] = typer.Option(None, "--plot", help="Certified accuracy vs eps figure."),
    task: Optional[str] = TASK,
    device: Optional[str] = DEVICE,
):
    """Certified accuracy: inputs whose prediction provably survives every weight perturbation in the set."""
    from .certification import certify as run, check_method
    from .inputs import resolve_data, resolve_model

    check_method(method, time_budget=time_budget)      # before any work, for every kind of set
    _cpu_only(device, "certify (float64 bound propagation)")
    _certifiable(model, task)
    if (chip is None) == (eps is None):
        raise ConstraintError("expected either --chip C or --norm inf|2 --eps E[,E...]")
    if coverage is not None:
        validate.probability("--coverage", coverage)
    _outs(json_path, plot_path)
    d = _data_for(model, data)
    if chip is not None:
        from .analyses.chip_bounds import certify_chip

        out = {"model": model, "data": d, **certify_chip(model, d, chip, coverage=coverage, method=method,
                                                         time_budget=time_budget,
                                                         on_note=lambda m: print(f"note: {m}", file=sys.stderr))}
        title = f"{model} on {d}: chip {out['chip']}"
    else:
        if norm is None:
            raise ConstraintError("expected --norm inf or --norm 2 with --eps")
        module, _ = resolve_model(model)
        test, _ = resolve_data(d)
        globs = [g.strip() for g in params.split(",")] if params else "*"
        if types:
            from .params import select

            globs = select(module, globs if params else None, types=[t.strip() for t in types.split(",")])
        res = run(module, test, eps=parse_eps(eps), norm=norm, relative=relative, params=globs, method=method,
                  time_budget=time_budget)
        out = {"model": model, "data": d, **res.to_dict()}
        title = f"{model} on {d}: L{res.norm} weight perturbation of {res.k:,} parameters" + (
            f", relative to each {relative}" if relative else "")
    report.print_table(report.certify_table(out, title))
    if json_path:
        report.write_json(out, json_path)
        if json_path != "-":
            print(f"wrote {json_path}", file=sys.stderr)
    if plot_path:
        report.plot_certify(out, plot_path)
        print(f"wrote {plot_path}", file=sys.stderr)


@app.command("bits")
def bits_cmd(
    model: str = MODEL,
    data: Optional[str] = DATA,
    format: str = typer.Option("int8", "--format", help="Stored number format: int2..int16, fp16, bf16, fp32, or a block format (fp8_e4m3, mxfp4, nvfp4, ...)."),
    per_channel: bool = typer.Option(False, "--per-channel", help="intN: one scale per output channel."),
    target: str = typer.Option("elements", "--target", help="Flip the bits of the stored elements, or of the scales that blocks share (mx*, nvfp4, fp8_*)."),
    until: Optional[float] = typer.Option(None, "--until", help="Target of the task's metric: an accuracy (0..1, default 0.11) or a perplexity / MSE."),
    until_factor: Optional[float] = typer.Option(None, "--until-factor", help="Target relative to the quantised model: perplexity or MSE x F, accuracy / F (default 10 for lm and regression)."),
    max_flips: int = typer.Option(100, "--max-flips", help="Give up the search after this many flips."),
    runs: int = typer.Option(5, "--runs", help="Random-flip runs (the median is reported)."),
    seed: int = typer.Option(0, "--seed"),
    params: Optional[str] = PARAMS,
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the results as JSON here ('-' = stdout)."),
    task: Optional[str] = TASK,
    tolerance: Optional[float] = TOLERANCE,
    output: Optional[str] = OUTPUT,
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
):
    """Worst-case bit flips (progressive bit search) vs random flips needed to reach a target accuracy."""
    from .analyses.bits import bits as run

    validate.trials("--runs", runs)
    validate.seed(seed)
    _outs(json_path)
    r = run(model, _data_for(model, data), format=format, per_channel=per_channel, target=target, until=until,
            until_factor=until_factor, max_flips=max_flips, random_runs=runs, seed=seed, params=params,
            **_task_kw(task, tolerance, output, weights, device))
    d = r.to_dict()
    print(report.bits_text(d), file=sys.stderr)
    if json_path:
        report.write_json(d, json_path)


@chips_app.command("list")
def chips_list(json_out: bool = typer.Option(False, "--json", help="Print the preset names as a JSON list on stdout.")):
    """List the shipped chip presets."""
    from .spec import list_chips, load_chip

    names = list_chips()
    if json_out:
        report.write_json(names, "-")
        return
    report.print_table(report.chips_table([load_chip(n) for n in names]))


@chips_app.command("show")
def chips_show(chip: str = typer.Argument(..., help="Preset name or TOML file."),
               toml: bool = typer.Option(False, "--toml", help="Print the spec as TOML (to start your own).")):
    """Show a chip spec."""
    from .spec import describe_chip, load_chip

    spec = load_chip(chip)
    print(spec.to_toml() if toml else describe_chip(spec))


@chips_app.command("check")
def chips_check(path: str = typer.Argument(..., help="A chip TOML file.")):
    """Validate a chip TOML file: prints 'ok' or one line naming the bad field (exit code 2)."""
    from .spec import load_chip

    spec = load_chip(path)
    print(f"ok: {spec.name} ({spec.format.kind}, {len(spec.faults)} faults)")


@app.command()
def campaign(
    model: str = MODEL,
    data: Optional[str] = DATA,
    chip: str = CHIP,
    trials: Optional[int] = typer.Option(None, "--trials", help="Trials (per stratum with --by layer)."),
    margin: Optional[float] = typer.Option(None, "--margin", help="Size the campaign for this margin of error (e.g. 0.01)."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence of the margin (two-sided)."),
    seed: int = typer.Option(0, "--seed", help="Campaign seed: trial t uses a generator seeded from (seed, t)."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLite journal, committed per chunk of trials."),
    resume: bool = typer.Option(False, "--resume", help="Continue the campaign in --db, running only missing trials."),
    workers: Optional[int] = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
    params: Optional[str] = typer.Option(None, "--params", help="Comma-separated globs: inject only into these device parameters."),
    by: Optional[str] = typer.Option(None, "--by", help="'layer': one stratum per layer (a per-layer vulnerability scan)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the results (or, with --dry-run, the plan) as JSON."),
    plot: Optional[str] = typer.Option(None, "--plot", help="With --by layer: draw the per-layer heatmap here."),
    task: Optional[str] = TASK,
    tolerance: Optional[float] = TOLERANCE,
    output: Optional[str] = OUTPUT,
    weights: Optional[str] = WEIGHTS,
    device: Optional[str] = DEVICE,
    cache_mb: str = typer.Option("auto", "--cache-mb", help="Memory budget of the fault-free activation cache (MB), or auto: what one forward pass holds at its peak (about twice a clean evaluation's memory in all). Values it drops are recomputed."),
    prove: bool = PROVE,
):
    """A statistically sized, resumable fault-injection campaign on a chip's fault model."""
    from .analyses.campaign.api import campaign as run, plan_campaign

    if db is not None:
        files.check_output(db, what="--db")
    _outs(json_path, plot)
    d = _data_for(model, data)
    if dry_run:
        plan, est = plan_campaign(model, d, chip, trials=trials, margin=margin, confidence=confidence, seed=seed,
                                  params=params, by=by, cache_mb=cache_mb, prove=prove, **_task_kw(task, tolerance, output, weights, device))
        out = {**plan.to_dict(), "estimate": {**est, "workers": workers or 1,
                                               "within_ceiling": plan.planned_trials <= validate.MAX_CAMPAIGN_TRIALS}}
        report.print_table(report.plan_table(plan, est, workers or 1))
        if json_path:
            report.write_json(out, json_path)
        return
    try:
        result = run(model, d, chip, trials=trials, margin=margin, confidence=confidence, seed=seed, db=db,
                     resume=resume, workers=workers, scheduler=scheduler, params=params, by=by, cache_mb=cache_mb, prove=prove,
                     **_task_kw(task, tolerance, output, weights, device))
    except KeyboardInterrupt:
        if db and Path(db).is_file():
            print(f"note: trials done so far are in {db}; rerun with --resume to continue", file=sys.stderr)
        raise
    _outputs(result, report.campaign_table(result.to_dict()), json_path, plot if by == "layer" else None,
             lambda r, p: report.plot_layers(r.to_dict(), p))


@results_app.command("show")
def results_show(db: str = typer.Option(..., "--db", help="Campaign journal."),
                 json_path: Optional[str] = typer.Option(None, "--json", help="Write the summary as JSON.")):
    """Summarise a campaign journal (also a partial one)."""
    from .analyses.campaign.journal import open_existing
    from .analyses.campaign.run import summarize

    _outs(json_path)
    with open_existing(db) as j:
        ident, golden = j.identity(), j.meta("golden_accuracy")
        d = {"campaign": ident, "plan": ident.get("plan"), "golden_accuracy": golden,
             **summarize(j.iter_rows(), golden or 0.0), "trials_done": j.count()}
    report.print_table(report.campaign_table(d))
    if json_path:
        report.write_json(d, json_path)


@results_app.command("export")
def results_export(db: str = typer.Option(..., "--db", help="Campaign journal."),
                   csv: Optional[str] = typer.Option(None, "--csv", help="Write the per-trial rows as CSV."),
                   parquet: Optional[str] = typer.Option(None, "--parquet", help="Write the per-trial rows as Parquet.")):
    """Export the per-trial rows of a campaign journal."""
    from .analyses.campaign.journal import open_existing

    if not csv and not parquet:
        raise HwfaultError("give --csv FILE and/or --parquet FILE")
    files.check_output(csv, what="--csv", allow_stdout=True)
    files.check_output(parquet, what="--parquet")
    with open_existing(db) as j:
        if csv:
            report.write_csv(j.iter_rows(), csv)
        if parquet:
            report.write_parquet(j.iter_rows(), parquet)
        n = j.count()
    print(f"exported {n} trials", file=sys.stderr)


# ----------------------------------------------------------------------------- entry point


class _Terminated(BaseException):
    """SIGTERM, raised as an exception so that every ``finally`` (temporary files, journals) runs."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _internal_error(e: BaseException, debug: bool) -> None:
    import traceback

    text = " ".join(str(e).split())[:200]
    if debug:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    print(f"error: internal error ({type(e).__name__}{': ' + text if text else ''})"
          + ("" if debug else "; rerun with --debug for the traceback"), file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: one line and exit code 2 for bad input (any HwfaultError), one line
    ``error: internal error (...)`` and exit code 1 for anything else (``--debug`` prints the
    traceback), 130 for Ctrl-C and 143 for SIGTERM; never a traceback otherwise."""
    import signal
    import threading

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args[: args.index("--") if "--" in args else len(args)]
    progress.enable(True)
    tune_allocator()
    cmd = typer.main.get_command(app)
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rv = cmd.main(args=args, prog_name="hwfault", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except HwfaultError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        code = e.exit_code
    except typer.Exit as e:
        code = e.exit_code
    except TyperException as e:  # usage errors: unknown option, missing value, bad type
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        code = 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except _Terminated:
        print("terminated", file=sys.stderr)
        code = 143
    except Exception as e:  # a bug: one line, and the traceback on request
        _internal_error(e, debug)
        code = 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
