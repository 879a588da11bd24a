"""The fuzz suite's cases: bad data files, model files and CLI arguments for every subcommand.

A case runs one ``hwfault`` command line (in-process, through ``hwfault.cli.main``) or one Python
call in a fresh directory, and states what a correct toolkit does: the exit code (2 for bad input),
one ``error:`` line that may name what is wrong, no traceback, no file left behind, and no payload
executed. Placeholders in the arguments: ``{file}`` (the case's input file), ``{dir}`` (the case
directory).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATA = "data files"
MODEL = "model files"
CLI = "CLI arguments"
SIGNALS = "signals"
DISK = "disk full"
CATEGORIES = (DATA, MODEL, CLI, SIGNALS, DISK)


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    argv: tuple[str, ...] = ()
    builder: str | None = None      # artifact builder name (see runner.builders)
    code: int = 2
    needle: str | None = None       # a substring the error line must contain
    outputs: tuple[str, ...] = ()   # files the case must leave (success cases)
    api: str | None = None          # a Python call instead of a command line ("load_model")
    slow: bool = False
    extra: dict = field(default_factory=dict, compare=False)


MLP = ("--model", "digits-mlp")
SWEEP = ("sweep", *MLP, "--eps", "0.1", "--methods", "gradient")

# commands that take --data, each on a model where the data set must be given
DATA_COMMANDS = {
    "sweep": ("sweep", *MLP, "--eps", "0.1", "--methods", "gradient", "--data", "{file}"),
    "probe": ("probe", *MLP, "--eps", "0.1", "--data", "{file}"),
    "estimate": ("estimate", *MLP, "--chip", "int8-sram-0.5v", "--trials", "2", "--no-breakdown", "--certify", "none",
                 "--data", "{file}"),
    "campaign": ("campaign", *MLP, "--chip", "int8-sram-0.5v", "--trials", "2", "--data", "{file}"),
    "certify": ("certify", *MLP, "--norm", "inf", "--eps", "1e-3", "--method", "ibp", "--data", "{file}"),
    "bits": ("bits", *MLP, "--max-flips", "2", "--runs", "1", "--data", "{file}"),
    "harden": ("harden", *MLP, "--method", "crt", "--epochs", "1", "--out", "h.safetensors", "--train-on-eval",
               "--data", "{file}"),
    "export": ("export", *MLP, "--out", "m.onnx", "--data", "{file}"),
}
# which data variants go through which commands: all through sweep, the ones that found tracebacks
# somewhere through every command
EVERY_COMMAND = {"labels-beyond-classes", "header-claims-1e12-rows", "object-y-payload", "wrong-shape",
                 "not-a-zip", "x-nan", "zero-samples", "y-negative"}
DATA_NEEDLES = {
    "missing": "not found", "no-y": "missing ['y']", "no-x": "missing ['x']", "labels-beyond-classes": "label 11",
    "header-claims-1e12-rows": "claims shape", "header-claims-more-than-stored": "claims shape",
    "object-y-payload": "object array", "object-x-payload": "object array", "x-nan": "NaN", "zero-samples": "no samples",
    "length-mismatch": "samples but", "y-negative": "negative labels", "wrong-shape": "cannot run on data",
    "not-a-zip": "not a readable .npz", "directory": "is a directory", "x-beyond-float32": "float32",
}


def data_cases(names: list[str]) -> list[Case]:
    out = []
    for name in names:
        cmds = DATA_COMMANDS if name in EVERY_COMMAND else {"sweep": DATA_COMMANDS["sweep"],
                                                             "estimate": DATA_COMMANDS["estimate"]}
        for cmd, argv in cmds.items():
            out.append(Case(f"data/{cmd}/{name}", DATA, argv, builder=f"data:{name}", needle=DATA_NEEDLES.get(name)))
    return out


MODEL_COMMANDS = {
    "sweep": ("sweep", "--model", "{file}", "--data", "digits", "--eps", "0.1", "--methods", "gradient"),
    "estimate": ("estimate", "--model", "{file}", "--data", "digits", "--chip", "int8-sram-0.5v", "--trials", "2",
                 "--no-breakdown", "--certify", "none"),
    "export": ("export", "--model", "{file}", "--data", "digits", "--out", "m.onnx"),
    "harden": ("harden", "--model", "{file}", "--data", "digits", "--method", "crt", "--epochs", "1",
               "--out", "h.pt2"),
    "campaign": ("campaign", "--model", "{file}", "--data", "digits", "--chip", "int8-sram-0.5v", "--trials", "2"),
    "certify": ("certify", "--model", "{file}", "--data", "digits", "--norm", "inf", "--eps", "1e-3",
                "--method", "ibp"),
    "bits": ("bits", "--model", "{file}", "--data", "digits", "--max-flips", "2", "--runs", "1"),
}
PAYLOADS = {"pt2-pickled-weight-payload", "pt2-sample-inputs-payload", "pt2-sympy-payload", "pt2-pickled-constant-payload",
            "pt2-old-format-payload", "pickle-pt", "pt2-legacy-weights-payload", "pt2-opaque-object-constant"}
MODEL_NEEDLES = {"pt2-pickled-weight-payload": "refused", "pt2-sample-inputs-payload": "refused",
                 "pt2-sympy-payload": "refused", "pt2-pickled-constant-payload": "refused",
                 "pt2-opaque-object-constant": "refused", "pt2-torchbind-object-constant": "refused",
                 "pt2-legacy-weights-payload": "refused", "pt2-old-format-payload": "refused",
                 "pt2-aotinductor-code": "AOTInductor", "pt2-target-torch-save": "not an operator",
                 "pt2-zip-bomb": "zip bomb", "pt2-nan-weight": "NaN", "st-nan-weights": "NaN", "st-inf-weights": "NaN or Inf",
                 "st-int64-tensors": "int64", "st-unknown-arch": "resnet9000", "onnx-argmax-output": "floating-point",
                 "onnx-external-data-dotdot": "inside the model's folder", "pickle-pt": "pickles",
                 "model-directory-pt2": "is a directory"}
OK_MODELS = ("pt2-pickled-legit-tensor", "pt2-batch-baked-in")  # safe archives: they load and run (a fixed
# batch runs in chunks of its size)


def model_cases(names: list[str]) -> list[Case]:
    out = []
    for name in names:
        needle = MODEL_NEEDLES.get(name)
        if name in OK_MODELS:  # a safe archive: it loads and runs
            out.append(Case(f"model/sweep/{name}", MODEL, MODEL_COMMANDS["sweep"] + ("--json", "out.json"),
                            builder=f"model:{name}", code=0, outputs=("out.json",)))
            continue
        cmds = MODEL_COMMANDS if name in PAYLOADS else {"sweep": MODEL_COMMANDS["sweep"]}
        for cmd, argv in cmds.items():
            out.append(Case(f"model/{cmd}/{name}", MODEL, argv, builder=f"model:{name}", needle=needle))
        if name in PAYLOADS or name.startswith("pt2-") or name.startswith("st-"):
            out.append(Case(f"model/api/{name}", MODEL, builder=f"model:{name}", api="load_model", needle=needle, code=2))
    return out


# ----------------------------------------------------------------------------- CLI arguments

BAD_NUMBERS = ("0", "-1", "nan", "inf", "-inf", "1e400", "abc", "")


def _flag_cases(cmd: str, base: tuple[str, ...], flag: str, values, needle=None, code=2) -> list[Case]:
    return [Case(f"cli/{cmd}/{flag.lstrip('-')}={v or 'empty'}", CLI, base + (flag, v), needle=needle, code=code)
            for v in values]


EST = ("estimate", *MLP, "--chip", "int8-sram-0.5v", "--no-breakdown", "--certify", "none", "--trials", "2")
CAMP = ("campaign", *MLP, "--chip", "int8-sram-0.5v")
CERT = ("certify", *MLP, "--method", "ibp")
BITS = ("bits", *MLP, "--runs", "1", "--max-flips", "2")
HARD = ("harden", *MLP, "--method", "crt", "--epochs", "1", "--out", "h.safetensors")
EXP = ("export", *MLP, "--out", "m.onnx")
PROBE = ("probe", *MLP, "--eps", "0.1")


def cli_cases() -> list[Case]:
    c: list[Case] = []
    # numeric flags of every command, each with the bad numbers (a value that is valid is left out)
    numeric = [
        ("sweep", SWEEP, "--eps", ("0", "-1", "nan", "inf", "abc", "", "1,,2", "1e400")),
        ("sweep", SWEEP, "--trials", ("0", "-1", "abc", "1000000000000", "1.5")),
        ("sweep", SWEEP, "--seed", ("-1", "abc", "99999999999999999999999")),
        ("sweep", SWEEP, "--n", ("0", "-5", "abc", "1.5")),
        ("sweep", SWEEP, "--norm", ("0.5", "-1", "nan", "abc", "")),
        ("sweep", SWEEP, "--steps", ("0", "-1", "abc")),
        ("sweep", SWEEP, "--step-size", ("0", "-1", "nan", "inf")),
        ("sweep", SWEEP, "--layers", ("99", "-99", "abc", "1.5")),
        ("probe", PROBE, "--eps", ("0", "nan", "abc")),
        ("probe", PROBE, "--n", ("0", "abc")),
        ("probe", PROBE, "--norm", ("0", "abc")),
        ("estimate", EST, "--trials", ("0", "-1", "1000000000000", "abc")),
        ("estimate", EST, "--steps", ("0", "-1", "abc")),
        ("estimate", EST, "--seed", ("-1", "abc")),
        ("estimate", EST, "--coverage", ("0", "1", "2", "-0.5", "nan", "abc")),
        ("campaign", CAMP, "--trials", ("0", "-1", "abc", "1000000000000")),
        ("campaign", CAMP + ("--trials", "2"), "--seed", ("-1", "abc")),
        ("campaign", CAMP, "--margin", ("0", "1", "-0.1", "nan", "1e-9", "abc")),
        ("campaign", CAMP + ("--margin", "0.05"), "--confidence", ("0", "1", "1.5", "nan")),
        ("campaign", CAMP + ("--trials", "2"), "--workers", ("0", "-1", "abc")),
        ("certify", CERT + ("--norm", "inf"), "--eps", ("0", "-1", "nan", "inf", "abc")),
        ("certify", CERT + ("--norm", "inf", "--eps", "1e-3"), "--time-budget", ("-1", "nan", "inf")),
        ("certify", CERT + ("--chip", "int8-sram-0.5v"), "--coverage", ("0", "1", "2", "nan")),
        ("certify", CERT + ("--eps", "1e-3"), "--norm", ("3", "abc", "0")),
        ("bits", BITS, "--runs", ("0", "-2", "1000000000000")),
        ("bits", BITS, "--until", ("-0.1", "1.5", "nan")),
        ("bits", BITS, "--max-flips", ("0", "-1", "1000000000000")),
        ("bits", BITS, "--seed", ("-1",)),
        ("harden", HARD, "--epochs", ("0", "-1")),
        ("harden", HARD, "--lr", ("0", "-1", "nan", "inf")),
        ("harden", HARD, "--batch-size", ("0", "-1")),
        ("harden", HARD, "--lambda", ("-1", "nan")),
        ("harden", HARD, "--trials", ("0", "1000000000000")),
        ("harden", HARD, "--seed", ("-1",)),
        ("harden", ("harden", *MLP, "--method", "crt-star", "--epochs", "1", "--out", "h.safetensors"),
         "--alpha", ("-0.1", "1.5", "nan")),
        ("harden", ("harden", *MLP, "--method", "apd", "--epochs", "1", "--out", "h.safetensors"),
         "--steps", ("0", "-1")),
        ("harden", ("harden", *MLP, "--method", "randbet", "--epochs", "1", "--out", "h.safetensors"),
         "--ber", ("-0.1", "0.9", "nan")),
        ("export", EXP, "--trials", ("0", "1000000000000")),
        ("export", EXP, "--opset", ("0", "-1", "abc")),
        ("zoo", ("zoo", "train", "digits-mlp", "--out", "zoo-out"), "--epochs", ("0", "-1")),
        ("sweep", SWEEP + ("--task", "regression"), "--tolerance", ("-1", "nan", "inf", "abc")),
        ("campaign", CAMP + ("--trials", "2"), "--cache-mb", ("0", "-1", "nan", "abc")),
        ("bits", BITS, "--until-factor", ("0", "-1", "nan", "abc")),
    ]
    for cmd, base, flag, values in numeric:
        c += _flag_cases(cmd, base, flag, values)

    # names and choices
    choices = [
        ("sweep", SWEEP, "--methods", ("gradiant", "", "random,foo")),
        ("sweep", SWEEP, "--task", ("translation", "", "lm", "regression")),  # lm, regression: not this model's
        ("sweep", SWEEP, "--output", ("5", "features", "-1")),
        ("sweep", SWEEP, "--weights", ("w.safetensors", "w.pt")),
        ("sweep", ("sweep", "--data", "digits", "--eps", "0.1"), "--model", ("nomodule:build", "hwfault.zoo:nothing",
                                                                           "hwfault.zoo:list_models")),
        ("sweep", SWEEP, "--types", ("convolution", "")),
        ("sweep", SWEEP, "--params", ("nothing*",)),
        ("sweep", SWEEP, "--probe", ("val", "")),
        ("probe", PROBE, "--by", ("row", "")),
        ("estimate", ("estimate", *MLP, "--trials", "2"), "--chip", ("int8-sram", "nope.toml", "")),
        ("estimate", EST, "--certify", ("crwn", "")),
        ("campaign", CAMP + ("--trials", "2"), "--by", ("tensor",)),
        ("campaign", CAMP + ("--trials", "2"), "--params", ("nothing*",)),
        ("certify", CERT + ("--norm", "inf", "--eps", "1e-3"), "--method", ("crwn", "")),
        ("certify", CERT + ("--norm", "inf", "--eps", "1e-3"), "--relative", ("row",)),
        ("bits", BITS, "--format", ("int1", "int99", "fp8", "")),
        ("harden", HARD, "--method", ("sam",)),
        ("export", EXP, "--format", ("int16", "fp64", "")),
        ("zoo", ("zoo",), "train", ("digits-rnn",)),
        ("chips", ("chips",), "show", ("nope", "")),
    ]
    for cmd, base, flag, values in choices:
        if flag in ("train", "show"):
            c += [Case(f"cli/{cmd}/{flag}={v or 'empty'}", CLI, base + (flag, v)) for v in values]
        else:
            c += _flag_cases(cmd, base, flag, values)

    # flag combinations
    combos = {
        "campaign/no-trials-no-margin": CAMP,
        "campaign/workers-and-scheduler": CAMP + ("--trials", "2", "--workers", "2", "--scheduler", "tcp://x:1"),
        "campaign/resume-without-db": CAMP + ("--trials", "2", "--resume"),
        "campaign/scheduler-unreachable": CAMP + ("--trials", "2", "--scheduler", "tcp://127.0.0.1:9"),
        "campaign/scheduler-not-a-url": CAMP + ("--trials", "2", "--scheduler", "nonsense"),
        "certify/neither-chip-nor-eps": CERT,
        "certify/both-chip-and-eps": CERT + ("--chip", "int8-sram-0.5v", "--eps", "1e-3"),
        "certify/eps-without-norm": CERT + ("--eps", "1e-3"),
        "harden/noise-without-chip": ("harden", *MLP, "--method", "noise", "--epochs", "1", "--out", "h.safetensors"),
        "harden/out-wrong-suffix": ("harden", *MLP, "--method", "crt", "--epochs", "1", "--out", "h.pt2"),
        "harden/onnx-model": ("harden", "--model", "x.onnx", "--method", "crt", "--out", "h.safetensors"),
        "export/out-wrong-suffix": ("export", *MLP, "--out", "m.txt"),
        "results/show-missing": ("results", "show", "--db", "missing.sqlite"),
        "results/export-nothing": ("results", "export", "--db", "missing.sqlite"),
        "sweep/unknown-option": SWEEP + ("--bogus",),
        "sweep/missing-model": ("sweep", "--eps", "1"),
        "sweep/no-data-for-file-model": ("sweep", "--model", "m.pt2", "--eps", "1"),
        "chips/check-missing": ("chips", "check", "missing.toml"),
        "unknown-command": ("frobnicate",),
    }
    c += [Case(f"cli/{k}", CLI, v) for k, v in combos.items()]
    c += [Case(f"cli/campaign/scheduler-replies-{k}", CLI, CAMP + ("--trials", "2", "--scheduler", "{file}"),
               builder=f"server:{k}", needle="Dask scheduler", outputs=("scheduler.txt",)) for k in ("garbage", "http")]
    c.append(Case("cli/harden/no-train-split", CLI, ("harden", *MLP, "--method", "crt", "--epochs", "1", "--out",
                                                     "h.safetensors", "--data", "{file}"), builder="npz:valid",
                  needle="no train split"))

    # output paths: under a file, a directory, a bad suffix, a full device, stdin-only outputs
    outs = []
    for cmd, base in (("sweep", SWEEP), ("probe", PROBE), ("estimate", EST), ("certify", CERT + ("--norm", "inf", "--eps", "1e-3")),
                      ("bits", BITS), ("campaign", CAMP + ("--trials", "2"))):
        outs += [
            Case(f"cli/{cmd}/json-under-a-file", CLI, base + ("--json", "afile/out.json"), builder="file:afile",
                 needle="is a file"),
            Case(f"cli/{cmd}/json-is-a-directory", CLI, base + ("--json", "adir"), builder="dir:adir",
                 needle="is a directory"),
        ]
    outs += [
        Case("cli/sweep/plot-bad-suffix", CLI, SWEEP + ("--plot", "x.xyz"), needle=".png"),
        Case("cli/sweep/plot-no-suffix", CLI, SWEEP + ("--plot", "plot"), needle=".png"),
        Case("cli/sweep/plot-to-stdout", CLI, SWEEP + ("--plot", "-")),
        Case("cli/probe/plot-bad-suffix", CLI, PROBE + ("--plot", "x.doc")),
        Case("cli/certify/plot-bad-suffix", CLI, CERT + ("--norm", "inf", "--eps", "1e-3", "--plot", "x.xyz")),
        Case("cli/campaign/plot-bad-suffix", CLI, CAMP + ("--trials", "2", "--by", "layer", "--plot", "x.xyz")),
        Case("cli/estimate/report-txt", CLI, EST + ("--report", "r.txt"), needle=".html"),
        Case("cli/estimate/report-under-a-file", CLI, EST + ("--report", "afile/r.html"), builder="file:afile"),
        Case("cli/harden/out-under-a-file", CLI, ("harden", *MLP, "--method", "crt", "--epochs", "1", "--out",
                                                  "afile/h.safetensors"), builder="file:afile", needle="is a file"),
        Case("cli/harden/out-is-a-directory", CLI, ("harden", *MLP, "--method", "crt", "--epochs", "1", "--out",
                                                    "adir.safetensors"), builder="dir:adir.safetensors"),
        Case("cli/harden/plot-bad-suffix", CLI, HARD + ("--chip", "int8-sram-0.5v", "--plot", "x.xyz")),
        Case("cli/export/out-under-a-file", CLI, ("export", *MLP, "--out", "afile/m.onnx"), builder="file:afile"),
        Case("cli/export/out-is-a-directory", CLI, ("export", *MLP, "--out", "adir.onnx"), builder="dir:adir.onnx"),
        Case("cli/zoo/out-is-a-file", CLI, ("zoo", "train", "digits-mlp", "--out", "afile"), builder="file:afile"),
        Case("cli/zoo/out-under-a-file", CLI, ("zoo", "train", "digits-mlp", "--out", "afile/sub"), builder="file:afile"),
        Case("cli/campaign/db-is-a-directory", CLI, CAMP + ("--trials", "2", "--db", "adir"), builder="dir:adir"),
        Case("cli/campaign/db-under-a-file", CLI, CAMP + ("--trials", "2", "--db", "afile/j.sqlite"), builder="file:afile"),
        Case("cli/campaign/db-not-a-journal", CLI, CAMP + ("--trials", "2", "--db", "afile"), builder="file:afile"),
        Case("cli/results/show-not-a-journal", CLI, ("results", "show", "--db", "afile"), builder="file:afile"),
        Case("cli/results/show-identity-not-json", CLI, ("results", "show", "--db", "j.sqlite"), builder="journal:badjson",
             needle="not valid JSON"),
        Case("cli/results/show-foreign-sqlite", CLI, ("results", "show", "--db", "j.sqlite"), builder="journal:foreign"),
        Case("cli/results/export-csv-under-a-file", CLI, ("results", "export", "--db", "j.sqlite", "--csv", "afile/x.csv"),
             builder="journal:good+file:afile"),
        Case("cli/results/export-parquet-to-stdout", CLI, ("results", "export", "--db", "j.sqlite", "--parquet", "-"),
             builder="journal:good"),
        # the results table is on stderr before the write fails: the error is the last line, and the only one
        Case("cli/sweep/json-to-dev-full", CLI, SWEEP + ("--json", "/dev/full"), needle="No space left",
             extra={"preamble": True}),
        Case("cli/estimate/report-to-dev-full", CLI, EST + ("--report", "/dev/full"), needle="No space left",
             extra={"preamble": True}),
        Case("cli/campaign/huge-trials-refused", CLI, CAMP + ("--trials", "1000000000000"), needle="ceiling"),
        Case("cli/campaign/tiny-margin-refused", CLI, CAMP + ("--margin", "1e-9"), needle="ceiling"),
        Case("cli/sweep/huge-random-trials-refused", CLI, ("sweep", *MLP, "--eps", "0.1", "--methods", "random",
                                                           "--trials", "1000000000000"), needle="<="),
        # controls: where a write must succeed and leave what it should
        Case("cli/sweep/json-to-dev-null", CLI, SWEEP + ("--json", "/dev/null"), code=0),
        Case("cli/sweep/json-through-a-symlink", CLI, SWEEP + ("--json", "link.json"), builder="symlink:link.json",
             code=0, outputs=("link.json", "real.json")),
        Case("cli/sweep/json-into-a-new-folder", CLI, SWEEP + ("--json", "new/deeper/out.json"), code=0,
             outputs=("new/", "new/deeper/", "new/deeper/out.json")),
        Case("cli/campaign/dry-run-beyond-ceiling", CLI, CAMP + ("--margin", "1e-9", "--dry-run", "--json", "plan.json"),
             code=0, outputs=("plan.json",)),
    ]
    c += outs
    # chip files
    chips = {
        "chips/check-not-toml": "not = toml = at all",
        "chips/check-unknown-format": 'name = "x"\n[format]\nkind = "int99"\n',
        "chips/check-bad-ber": 'name = "x"\n[format]\nkind = "int8"\n[[faults]]\nkind = "bitflip"\nber = 1.5\n',
        "chips/check-string-number": 'name = "x"\n[format]\nkind = "int8"\n[[faults]]\nkind = "bitflip"\nber = "0.1"\n',
        "chips/check-unknown-fault": 'name = "x"\n[format]\nkind = "int8"\n[[faults]]\nkind = "gremlins"\n',
        "chips/check-binary": "\x00\x01\x02\xff",
    }
    c += [Case(f"cli/{k}", CLI, ("chips", "check", "chip.toml"), builder=f"text:chip.toml:{v}") for k, v in chips.items()]
    c += [Case(f"cli/estimate/chip-file-{k.split('-', 1)[1]}", CLI, ("estimate", *MLP, "--chip", "chip.toml", "--trials", "2"),
               builder=f"text:chip.toml:{v}") for k, v in list(chips.items())[:3]]
    return c


def all_cases(data_names, model_names) -> list[Case]:
    return data_cases(data_names) + model_cases(model_names) + cli_cases()
