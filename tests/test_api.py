"""The public API is curated: this pins it, so a change to it is a deliberate one."""

import hwfault


def test_public_api_is_pinned():
    assert sorted(hwfault.__all__) == sorted([
        "__version__", "load_data", "list_datasets", "load_model", "list_models", "save_checkpoint",
        "load_chip", "list_chips", "ChipSpec",
        "select", "describe", "Selection", "perturbed", "evaluate", "loss_and_grad", "EvalResult",
        "ConstraintSet", "LpBall", "Box", "Ellipsoid", "random", "gradient", "multistep", "CorruptionPoint",
        "CorruptionResult",
        "sweep", "probe", "SweepResult", "ProbeResult", "estimate", "EstimateResult", "certify", "bits",
        "BitsResult", "campaign", "plan_campaign", "CampaignResult", "protect", "ProtectResult", "realised",
        "faulty_copy",
        "harden", "HardenConfig", "harden_checkpoint", "export_onnx", "export_model", "load_onnx",
        "HwfaultError", "DataError", "ModelError", "SelectionError", "ConstraintError", "SpecError", "ExportError",
        "OutputError", "LimitError",
        "Task", "Classification", "LanguageModel", "Regression", "ArrayDataset",
    ])
    for name in hwfault.__all__:
        assert hasattr(hwfault, name)


def test_cli_is_the_only_typer_user():
    """typer (and click) are the CLI's business: no module outside hwfault/cli* imports them, at any
    depth of the package (the imports are parsed, so a lazy import inside a function counts too)."""
    import ast
    import pathlib

    pkg = pathlib.Path(hwfault.__file__).parent
    users = set()
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] in ("typer", "click") for n in names):
                users.add(str(path.relative_to(pkg)))
    assert users and all(u in ("cli.py", "cliargs.py") or u.startswith("cli/") for u in users), users
