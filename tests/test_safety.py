"""Safe loading, writes that respect their target, bounded campaigns and honest defaults (issue 11).

The fuzz suite (test_fuzz.py) throws hundreds of bad inputs at the CLI; these tests pin the
mechanisms one by one against independent references.
"""

from __future__ import annotations

import io
import json
import math
import os
import sqlite3
import zipfile

import numpy as np
import pytest
import torch

import hwfault as hw
from hwfault import files
from hwfault.zoo import get_entry
from hwfault.errors import DataError, LimitError, ModelError, OutputError
from hwfault.pt2 import check_archive, safe_shape_expression


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    d = tmp_path_factory.mktemp("pt2")
    model = hw.load_model("digits-mlp")
    x = hw.load_data("digits").tensors[0][:4]
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(ep, str(d / "good.pt2"))
    return d / "good.pt2"


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as z:
        files_ = {i.filename: z.read(i.filename) for i in z.infolist()}
    root = next(iter(files_)).split("/")[0] + "/"
    edit(files_, root)
    with zipfile.ZipFile(dst, "w") as z:
        for k, v in files_.items():
            z.writestr(k, v)
    return dst


def _torch_save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_a_pt2_with_a_pickled_payload_neither_runs_it_nor_loads(archive, tmp_path):
    marker = tmp_path / "PWNED"

    def edit(f, r):
        cfg = json.loads(f[r + "data/weights/model_weights_config.json"])
        fqn = next(iter(cfg["config"]))
        cfg["config"][fqn]["use_pickle"] = True
        f[r + "data/weights/model_weights_config.json"] = json.dumps(cfg).encode()
        f[r + "data/weights/" + cfg["config"][fqn]["path_name"]] = _torch_save(_Payload(marker))

    evil = _rewrite(archive, tmp_path / "evil.pt2", edit)
    # the reference: torch's own loader runs the payload (that is what hwfault must not do)
    with pytest.raises(Exception):
        torch.export.load(str(evil))
    assert marker.exists(), "the payload is live: torch.export.load runs it"
    marker.unlink()
    with pytest.raises(ModelError, match=r"refused: entry 'data/weights/weight_\d+' is a pickle .*posix.system"):
        hw.load_model(evil)
    assert not marker.exists()


@pytest.mark.parametrize("what", ["sample inputs", "shape expression"])
def test_the_other_code_paths_of_torch_export_load_are_closed(archive, tmp_path, what):
    marker = tmp_path / "PWNED"

    def edit(f, r):
        if what == "sample inputs":
            f[r + "data/sample_inputs/model.pt"] = _torch_save(_Payload(marker))
        else:
            t = json.loads(f[r + "models/model.json"])

            def walk(o):
                if isinstance(o, dict):
                    for k in o:
                        if k == "expr_str":
                            o[k] = f"__import__('os').system('touch {marker}')"
                        else:
                            walk(o[k])
                elif isinstance(o, list):
                    for v in o:
                        walk(v)
            walk(t)
            f[r + "models/model.json"] = json.dumps(t).encode()

    evil = _rewrite(archive, tmp_path / "evil.pt2", edit)
    with pytest.raises(ModelError, match="refused"):
        hw.load_model(evil)
    assert not marker.exists()


def test_a_legitimately_pickled_tensor_still_loads(archive, tmp_path):
    """use_pickle with a plain tensor passes PyTorch's restricted unpickler: the archive loads and
    gives the same outputs as the original."""
    def edit(f, r):
        cfg = json.loads(f[r + "data/weights/model_weights_config.json"])
        fqn, meta = next(iter(cfg["config"].items()))
        shape = [s["as_int"] for s in meta["tensor_meta"]["sizes"]]
        t = torch.frombuffer(bytearray(f[r + "data/weights/" + meta["path_name"]]), dtype=torch.float32).reshape(shape)
        meta["use_pickle"] = True
        f[r + "data/weights/model_weights_config.json"] = json.dumps(cfg).encode()
        f[r + "data/weights/" + meta["path_name"]] = _torch_save(torch.nn.Parameter(t.clone()))

    ok = _rewrite(archive, tmp_path / "ok.pt2", edit)
    x = hw.load_data("digits").tensors[0][:8]
    assert torch.allclose(hw.load_model(ok)(x), hw.load_model("digits-mlp")(x), atol=1e-6)


@pytest.mark.parametrize("expr, safe", [
    ("Symbol('s31', positive=True, integer=True)", True),
    ("s0*s1 + 2", True),
    ("FloorDiv(s0 + 3, 4)", True),
    ("Max(1, s0 - 1)", True),
    ("Eq(Mod(s0, 2), 0)", True),
    ("__import__('os').system('x')", False),
    ("Symbol('s0').__class__", False),
    ("s0.func", False),
    ("open('x')", False),
    ("(lambda: 1)()", False),
    ("Symbol('os.system')", False),
    ("[s0 for s0 in range(10)]", False),
    ("eval('1')", False),
    ("s0[0]", False),
])
def test_shape_expressions_are_an_allowlist(expr, safe):
    assert safe_shape_expression(expr) is safe


def test_every_zoo_model_exports_to_an_archive_the_check_accepts(tmp_path):
    for name in hw.list_models():
        m = hw.load_model(name)
        x = hw.load_data(get_entry(name).data).tensors[0][:4]
        ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        torch.export.save(ep, str(tmp_path / f"{name}.pt2"))
        check_archive(tmp_path / f"{name}.pt2")


def test_load_model_leaves_requires_grad_as_pytorch_does_and_offers_the_switch(digits):
    m = hw.load_model("digits-mlp")
    assert all(p.requires_grad for p in m.parameters())
    x, y = digits.tensors
    torch.nn.functional.cross_entropy(m(x[:8]), y[:8]).backward()   # a user's own training step works
    assert m.fc1.weight.grad is not None
    frozen = hw.load_model("digits-mlp", requires_grad=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    # the analyses take either and leave the flags as they found them
    before = [p.requires_grad for p in m.parameters()]
    hw.sweep(m, digits, epsilons=[0.1], methods="gradient")
    assert [p.requires_grad for p in m.parameters()] == before


def test_int64_and_nan_checkpoints_are_named_when_loaded(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in hw.load_model("digits-mlp").state_dict().items()}
    header = {"format": "hwfault-checkpoint/1", "arch": "digits-mlp", "meta": "{}"}
    save_file({k: v.round().long() for k, v in state.items()}, str(tmp_path / "i.safetensors"), metadata=header)
    with pytest.raises(ModelError, match="is int64, but architecture 'digits-mlp' stores it as float32"):
        hw.load_model(tmp_path / "i.safetensors")
    state["fc2.weight"][3, :5] = float("nan")
    save_file(state, str(tmp_path / "n.safetensors"), metadata=header)
    with pytest.raises(ModelError, match="'fc2.weight' holds 5 NaN or Inf values"):
        hw.load_model(tmp_path / "n.safetensors")


# ----------------------------------------------------------------------------- writes

def test_atomic_write_replaces_a_regular_file_whole(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("old")
    with pytest.raises(OutputError, match="cannot write"):
        files.atomic_write(p, lambda t: (t.write_text("half"), (_ for _ in ()).throw(OSError(28, "No space left"))))
    assert p.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["r.json"]
    files.write_text(p, "new")
    assert p.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["r.json"]


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / "real.json").write_text("old")
    os.symlink("real.json", tmp_path / "link.json")
    files.write_text(tmp_path / "link.json", "new")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"
    os.symlink("missing.json", tmp_path / "dangling.json")        # a dangling link creates its target
    files.write_text(tmp_path / "dangling.json", "x")
    assert (tmp_path / "dangling.json").is_symlink() and (tmp_path / "missing.json").read_text() == "x"


def test_devices_and_fifos_are_written_through_never_replaced(tmp_path):
    files.write_text("/dev/null", "nothing")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    with pytest.raises(OutputError, match="No space left"):
        files.write_text("/dev/full", "x" * 10000)
    assert not os.path.isfile("/dev/full")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    import threading

    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    files.write_text(fifo, "through the pipe")
    reader.join(10)
    assert got == ["through the pipe"] and fifo.is_fifo()


def test_output_checks_run_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match="'.*afile' is a file, not a directory"):
        files.check_output(tmp_path / "afile" / "out.json")
    with pytest.raises(OutputError, match="is a directory"):
        files.check_output(tmp_path / "adir")
    with pytest.raises(OutputError, match=r"ending in \.png"):
        files.check_output(tmp_path / "x.xyz", suffixes=files.FIGURE_SUFFIXES)
    assert files.check_output("-", allow_stdout=True) is None
    # a failed write into folders it made removes them again
    with pytest.raises(OutputError):
        files.atomic_write(tmp_path / "new" / "deep" / "f", lambda t: (_ for _ in ()).throw(OSError(5, "I/O error")))
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- data files

def test_an_npz_header_is_checked_against_the_bytes_behind_it(tmp_path):
    """A header that claims 10^12 rows is refused from the header alone (no allocation)."""
    hdr = repr({"descr": "<f4", "fortran_order": False, "shape": (10**12, 64)}).encode()
    hdr += b" " * (64 - (10 + len(hdr) + 1) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr + b"\0" * 64
    y = io.BytesIO()
    np.save(y, np.zeros(10, np.int64))
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as z:
        z.writestr("x.npy", npy)
        z.writestr("y.npy", y.getvalue())
    with pytest.raises(DataError, match=r"claims shape \(1000000000000, 64\) of float32 \(256,000,000,000,000 bytes\)"):
        hw.load_data(tmp_path / "h.npz")


def test_only_the_arrays_of_the_split_are_read(tmp_path):
    """x_train may be unreadable: evaluating the test split never touches it."""
    x, y = np.zeros((4, 1, 8, 8), np.float32), np.arange(4)
    np.savez(tmp_path / "s.npz", x_test=x, y_test=y, x_train=np.array([object()] * 4, dtype=object), y_train=y)
    assert len(hw.load_data(tmp_path / "s.npz", "test")) == 4
    with pytest.raises(DataError, match="object array"):
        hw.load_data(tmp_path / "s.npz", "train")


# ----------------------------------------------------------------------------- campaigns

def test_missing_trial_ids_stream_from_merged_ranges():
    from hwfault.analyses.campaign.run import _chunks, _missing

    done = [(0, 3), (5, 6), (9, 12)]
    assert list(_missing(14, done)) == [3, 4, 6, 7, 8, 12, 13]
    assert list(_missing(10, done)) == [3, 4, 6, 7, 8]
    gen = _missing(10**15, [(0, 2)])                      # lazily: a huge plan costs nothing up front
    assert [next(gen) for _ in range(3)] == [2, 3, 4]
    assert list(_chunks(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_streaming_summary_equals_the_numpy_reference():
    from scipy import stats as st

    from hwfault.analyses.campaign.run import summarize

    rng = np.random.default_rng(0)
    rows = [{"trial": t, "stratum": "a" if t % 3 else "b", "accuracy": float(a), "sdc": int(a < 0.9),
             "critical_sdc": int(a < 0.8), "due": 0, "sdc_rate": float(1 - a)}
            for t, a in enumerate(rng.uniform(0.7, 1.0, 200))]
    got = summarize(iter(rows), 0.95)
    for key, rs in (("overall", rows), ("a", [r for r in rows if r["stratum"] == "a"])):
        g = got["overall"] if key == "overall" else got["strata"][key]
        acc = np.array([r["accuracy"] for r in rs])
        lo, hi = st.t.interval(0.95, len(acc) - 1, loc=acc.mean(), scale=st.sem(acc))
        assert g["trials"] == len(rs) and g["accuracy_mean"] == pytest.approx(acc.mean(), rel=1e-12)
        assert g["accuracy_ci95"] == pytest.approx([lo, hi], rel=1e-9)
        assert g["sdc_rate"] == pytest.approx(np.mean([r["sdc"] for r in rs]))
    assert list(got["strata"]) == ["b", "a"]                # in order of their first trial


def test_an_accuracy_interval_never_leaves_0_1():
    from hwfault.stats import t_interval

    lo, hi = t_interval([1.0, 1.0, 0.981, 1.0], domain=(0.0, 1.0))
    assert 0 <= lo < hi == 1.0
    lo, hi = t_interval([1.0, 1.0, 0.981, 1.0])
    assert hi > 1.0                                          # the unclipped interval would show 100.x %


def test_a_plan_beyond_the_ceiling_is_refused_before_any_journal(tmp_path):
    from hwfault.analyses.campaign.plan import make_plan
    from hwfault.analyses.campaign.run import Recipe, run_campaign
    from hwfault.faults import Chip
    from hwfault.spec import load_chip

    spec = load_chip("int8-sram-0.5v")
    chip = Chip.build(spec, hw.load_model("digits-mlp", requires_grad=False))
    plan = make_plan(chip, margin=1e-9)
    assert plan.planned_trials > 10**17
    with pytest.raises(LimitError, match="beyond the ceiling"):
        run_campaign(Recipe("digits-mlp", "digits", spec.to_dict(), 0), plan, db=str(tmp_path / "j.sqlite"))
    assert not (tmp_path / "j.sqlite").exists()


def test_a_campaign_that_fails_to_start_removes_the_journal_it_created(tmp_path, monkeypatch):
    from hwfault.analyses.campaign import run as run_mod
    from hwfault.analyses.campaign.plan import make_plan
    from hwfault.analyses.campaign.run import Recipe, run_campaign
    from hwfault.faults import Chip
    from hwfault.spec import load_chip

    spec = load_chip("int8-sram-0.5v")
    chip = Chip.build(spec, hw.load_model("digits-mlp", requires_grad=False))
    plan = make_plan(chip, trials=5)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_mod, "run_chunk", boom)
    db = tmp_path / "j.sqlite"
    with pytest.raises(OSError):
        run_campaign(Recipe("digits-mlp", "digits", spec.to_dict(), 0), plan, db=str(db))
    assert sorted(os.listdir(tmp_path)) == []
    # a journal with trials in it is kept whatever stops the campaign
    monkeypatch.undo()

    def stop(rows):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_campaign(Recipe("digits-mlp", "digits", spec.to_dict(), 0), make_plan(chip, trials=9), db=str(db),
                     chunk=3, on_rows=stop)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 3


# ----------------------------------------------------------------------------- one error path

def test_an_internal_error_is_one_line_with_exit_1_and_debug_shows_the_traceback(capsys, monkeypatch):
    import hwfault.analyses.sweep as sweep_mod
    from hwfault.cli import main

    monkeypatch.setattr(sweep_mod, "sweep", lambda *a, **k: 1 / 0)
    assert main(["sweep", "--model", "digits-mlp", "--eps", "1"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: internal error (ZeroDivisionError: division by zero); rerun with "
                                        "--debug for the traceback"]
    assert main(["--debug", "sweep", "--model", "digits-mlp", "--eps", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("(ZeroDivisionError: division by zero)")


def test_a_model_returning_a_dict_is_scored_from_its_logits(digits):
    class HF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = hw.load_model("digits-mlp")

        def forward(self, x):
            return {"logits": self.inner(x), "hidden": x}

    assert hw.evaluate(HF(), digits).accuracy == hw.evaluate(hw.load_model("digits-mlp"), digits).accuracy

    class NoLogits(HF):
        def forward(self, x):
            return {"scores": self.inner(x)}

    with pytest.raises(ModelError, match=r"a dict with keys \['scores'\] \(no 'logits'\)"):
        hw.evaluate(NoLogits(), digits)


def test_harden_without_a_train_split_refuses_unless_told(tmp_path, capsys):
    from hwfault.cli import main

    x, y = hw.load_data("digits").tensors
    np.savez(tmp_path / "d.npz", x=x[:64].numpy(), y=y[:64].numpy())
    args = ["harden", "--model", "digits-mlp", "--data", str(tmp_path / "d.npz"), "--method", "crt", "--epochs", "1",
            "--out", str(tmp_path / "h.safetensors")]
    assert main(args) == 2
    assert "no train split" in capsys.readouterr().err and not (tmp_path / "h.safetensors").exists()
    assert main(args + ["--train-on-eval"]) == 0
    err = capsys.readouterr().err
    assert "training on the evaluation data (--train-on-eval)" in err
    assert "Trained on the evaluation data" in (tmp_path / "h.md").read_text()


def test_nan_gradients_give_a_recorded_corruption_not_an_internal_error(digits):
    """A model whose loss is NaN on a few inputs: the one-step corruption is built from the finite
    part of the gradient, and the point says how many entries were not finite."""
    class Spiky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = hw.load_model("digits-mlp")

        def forward(self, x):
            out = self.inner(x)
            return torch.where(x.flatten(1)[:, :1] > 0.99, out * float("nan"), out)

    r = hw.sweep(Spiky(), digits, epsilons=[0.5], methods="gradient").method("gradient")[0.5]
    assert r.extra["gradient_nonfinite"] > 0 and math.isfinite(r.extra["first_order"])
