"""The public API is curated: this pins it, so a change to it is a deliberate one."""

import hwfault


def test_public_api_is_pinned():
    assert sorted(hwfault.__all__) == sorted([
        "__version__", "load_data", "list_datasets", "load_model", "list_models", "save_checkpoint",
        "select", "describe", "Selection", "perturbed", "evaluate", "loss_and_grad", "EvalResult",
        "ConstraintSet", "LpBall", "random", "gradient", "multistep", "CorruptionPoint", "CorruptionResult",
        "sweep", "probe", "SweepResult", "ProbeResult", "estimate", "certify",
        "harden", "HardenConfig", "export_onnx", "load_onnx",
        "HwfaultError", "DataError", "ModelError", "SelectionError", "ConstraintError", "SpecError", "ExportError",
    ])
    for name in hwfault.__all__:
        assert hasattr(hwfault, name)


def test_cli_is_the_only_typer_user():
    import pathlib

    pkg = pathlib.Path(hwfault.__file__).parent
    users = [p.name for p in pkg.glob("*.py") if "import typer" in p.read_text()]
    assert users == ["cli.py"]
