"""The zoo's character-level language model: its shipped corpus, vocabulary, windows, architecture
(causal, exportable), shipped checkpoint and deterministic training."""

import gzip
import hashlib
import shutil

import numpy as np
import pytest
import torch

import hwfault as hw
from hwfault import text, zoo
from hwfault.errors import DataError
from hwfault.training import deterministic

CORPUS_FILE_SHA256 = "e4d77e42eb3750cc642d8195dccb6b8018375bf140bc866ca6533c1ec4deaaa7"  # the shipped .gz bytes


def test_corpus_is_shipped_deterministic_and_checksummed(tmp_path):
    assert hashlib.sha256(text.CORPUS.read_bytes()).hexdigest() == CORPUS_FILE_SHA256
    t = text.corpus_text()
    assert hashlib.sha256(t.encode("utf-8")).hexdigest() == text.CORPUS_SHA256
    assert 600_000 < len(t) < 1_000_000
    assert t.startswith(text.header("argparse.py")) and text.header("tokenize.py") in t
    assert [t.count(text.header(f)) for f in text.CORPUS_FILES] == [1] * len(text.CORPUS_FILES)
    # an altered corpus is refused, with a one-line reason
    altered = tmp_path / "pystdlib.txt.gz"
    altered.write_bytes(gzip.compress(t.replace("def ", "def  ", 1).encode(), mtime=0))
    with pytest.raises(DataError, match="altered"):
        text.corpus_text(altered)
    altered.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a readable gzip"):
        text.corpus_text(altered)
    with pytest.raises(DataError, match="not found"):
        text.corpus_text(tmp_path / "missing.txt.gz")
    shutil.copy(text.CORPUS, tmp_path / "copy.gz")
    assert text.corpus_text(tmp_path / "copy.gz") == t


def test_windows_shapes_shift_and_split():
    xtr, ytr = text.text_arrays("train")
    xte, yte = text.text_arrays("test")
    for x, y in ((xtr, ytr), (xte, yte)):
        assert x.dtype == y.dtype == np.int64 and x.shape == y.shape and x.shape[1] == text.CONTEXT == 64
        assert np.array_equal(y[:, :-1], x[:, 1:])  # y is x shifted by one
        assert np.array_equal(y[:-1, -1], x[1:, 0])  # non-overlapping, consecutive windows
        assert 0 <= x.min() and x.max() < text.VOCAB_SIZE
    assert 10_000 <= len(xtr) <= 15_000 and 500 <= len(xte) <= 2_000
    ids = text.encode(text.corpus_text())
    cut = int(round(len(ids) * 0.9))  # by position: test is the last 10%
    assert np.array_equal(xtr.reshape(-1), ids[:xtr.size]) and np.array_equal(xte.reshape(-1), ids[cut:cut + xte.size])
    assert text.decode(xtr[0]).startswith("# ===== Lib/argparse.py")
    assert np.array_equal(text.text_arrays("test")[0], xte)  # the same every call (fresh arrays)
    assert not np.shares_memory(xte, text._corpus_ids())  # fresh copies: a caller may write into them
    with pytest.raises(DataError, match="unknown split"):
        text.text_arrays("validation")


def test_vocabulary_round_trip():
    assert text.VOCAB_SIZE == 98 and len(set(text.VOCAB)) == 97 and text.UNK == 97
    s = "def f(x):\n\treturn {'a': x ~ 1} # `ok` \\ | ^\n"
    ids = text.encode(s)
    assert ids.dtype == np.int64 and ids.shape == (len(s),) and text.decode(ids) == s
    printable = "".join(chr(c) for c in range(32, 127)) + "\n\t"
    assert text.decode(text.encode(printable)) == printable
    odd = text.encode("é\r€\x00😀")
    assert odd.tolist() == [text.UNK] * 5 and text.decode(odd) == text.UNK_CHAR * 5
    assert text.decode(torch.tensor([[2, 3]])) == " !"
    with pytest.raises(DataError, match="character ids"):
        text.decode([text.VOCAB_SIZE])


def test_architecture_is_causal_and_exports(tmp_path):
    torch.manual_seed(0)
    model = zoo.CharTransformer().eval()
    x = torch.randint(0, text.VOCAB_SIZE, (3, text.CONTEXT))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, text.CONTEXT, text.VOCAB_SIZE)
        for t in (0, 17, 63):
            x2 = x.clone()
            x2[:, t] = (x2[:, t] + 1) % text.VOCAB_SIZE
            out2 = model(x2)
            assert torch.equal(out2[:, :t], out[:, :t])  # no logit before t depends on token t
            assert not torch.allclose(out2[:, t], out[:, t])
        assert torch.allclose(model(x[:, :10]), out[:, :10], atol=1e-5)  # shorter contexts work too
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert torch.allclose(ep.module()(x[:2]), out[:2], atol=1e-5)


def test_onnx_export_opset18(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = zoo.CharTransformer().eval()
    x = torch.randint(0, text.VOCAB_SIZE, (2, text.CONTEXT))
    path = tmp_path / "charlm.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    sess = onnxruntime.InferenceSession(str(path))
    xb = torch.randint(0, text.VOCAB_SIZE, (5, text.CONTEXT))
    got = sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(xb).numpy()).max() < 1e-4


def test_shipped_checkpoint_matches_its_card():
    model = hw.load_model("pycode-charlm")
    assert not model.training
    card = zoo.model_card("pycode-charlm")
    assert card["task"] == "lm" and card["data"] == "pycode"
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    data = hw.load_data("pycode", "test")
    assert torch.equal(data.tensors[0], torch.from_numpy(text.text_arrays("test")[0]))
    r = hw.evaluate(model, data, task="lm")
    assert r.n == len(data) and r.metrics["token_accuracy"] == r.accuracy
    assert r.metrics["perplexity"] == pytest.approx(card["test_perplexity"], rel=1e-4)
    assert r.loss == pytest.approx(card["test_loss"], rel=1e-4)
    assert r.accuracy == pytest.approx(card["test_token_accuracy"], abs=1e-5)
    assert card["test_perplexity"] < 8
    md = (zoo.models_dir() / "pycode-charlm.md").read_text()
    assert "perplexity" in md and "nats/char" in md and card["command"] in md and "test accuracy" not in md


def test_model_task():
    assert zoo.model_task("pycode-charlm") == "lm" and zoo.get_entry("pycode-charlm").task == "lm"
    assert zoo.model_task("digits-cnn") == "classification"
    assert zoo.model_task(zoo.models_dir() / "pycode-charlm.safetensors") == "lm"
    assert zoo.model_task(zoo.models_dir() / "digits-mlp.safetensors") == "classification"
    assert zoo.model_task("somewhere/else.pt2") == "classification"


def test_mini_retraining_is_deterministic():
    entry = zoo.get_entry("pycode-charlm")
    x, y = (torch.from_numpy(a[:192]) for a in text.text_arrays("train"))

    def run():
        with deterministic():
            torch.manual_seed(entry.seed)
            model = entry.build()
            zoo.fit(model, x, y, epochs=1, lr=entry.lr, batch_size=entry.batch_size,
                    weight_decay=entry.weight_decay, seed=entry.seed, task=entry.task)
        return model.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = (torch.manual_seed(entry.seed), entry.build())[1].state_dict()
    assert not torch.equal(a["head.weight"], init["head.weight"])  # it did train
