"""The shipped text corpus and its character vocabulary: the data of the zoo's language model.

The corpus is a fixed list of pure-Python modules of CPython 3.11.7's standard library (see
``hwfault/corpus/README.md``), concatenated in a fixed order, each after a one-line header, and
shipped gzip-compressed as ``hwfault/corpus/pystdlib.txt.gz``, so it is the same on every machine and
Python version; its text is checked against :data:`CORPUS_SHA256` whenever it is read.

Characters map to ids through :data:`VOCAB` (tab, newline and printable ASCII 32..126); any other
character is :data:`UNK`. :func:`text_arrays` cuts the encoded corpus into non-overlapping windows of
:data:`CONTEXT` characters: ``x`` holds the window, ``y`` the next character of each position (``x``
shifted by one). The split is by position: the last 10% of the corpus is ``test``, the rest ``train``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

import numpy as np

from .errors import DataError

CONTEXT = 64
VOCAB = "\t\n" + "".join(chr(c) for c in range(32, 127))  # id = position in this string
UNK = len(VOCAB)  # the id of every other character
VOCAB_SIZE = len(VOCAB) + 1
UNK_CHAR = "\ufffd"  # what decode() writes for UNK
TEST_FRACTION = 0.1

CORPUS = Path(__file__).resolve().parent / "corpus" / "pystdlib.txt.gz"
CORPUS_SHA256 = "380120fb18384051a9b90923aae7df0fd32d54ec864e861c6405da270812897e"  # of the decompressed UTF-8 text
CORPUS_PYTHON = "3.11.7"
CORPUS_FILES = (  # relative to the standard library directory, in corpus order
    "argparse.py", "collections/__init__.py", "contextlib.py", "dataclasses.py", "enum.py", "fractions.py",
    "functools.py", "heapq.py", "inspect.py", "pathlib.py", "random.py", "shutil.py", "statistics.py",
    "string.py", "textwrap.py", "tokenize.py",
)

_LUT = np.full(128, UNK, dtype=np.int64)
_LUT[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB))


def header(name: str) -> str:
    """The line that precedes each file in the corpus."""
    return f"# ===== Lib/{name} (CPython {CORPUS_PYTHON}) =====\n"


def build_corpus(stdlib: str | Path) -> bytes:
    """The corpus text (UTF-8) from a standard library directory: how the shipped file was made
    (``gzip.compress(build_corpus(sysconfig.get_paths()['stdlib']), mtime=0)`` on Python 3.11.7)."""
    parts = []
    for name in CORPUS_FILES:
        src = (Path(stdlib) / name).read_text(encoding="utf-8")
        parts.append(header(name) + src + ("" if src.endswith("\n") else "\n") + "\n")
    return "".join(parts).encode("utf-8")


def corpus_text(path: str | Path = CORPUS) -> str:
    """The corpus, verified against its checksum (a DataError if it is missing or was altered)."""
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"text corpus not found: {path} (it ships with hwfault; reinstall the package)") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: not a readable gzip file ({type(e).__name__}: {str(e).strip()[:120]})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != CORPUS_SHA256:
        raise DataError(f"{path}: the text corpus was altered (sha256 {digest[:16]}..., expected "
                        f"{CORPUS_SHA256[:16]}...); restore the shipped file")
    return data.decode("utf-8")


def encode(text: str) -> np.ndarray:
    """Character ids (int64) of ``text``; characters outside :data:`VOCAB` become :data:`UNK`."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.full(len(codes), UNK, dtype=np.int64)
    ascii_ = codes < 128
    ids[ascii_] = _LUT[codes[ascii_]]
    return ids


def decode(ids) -> str:
    """The text of character ids (:data:`UNK` decodes to U+FFFD); ids outside the vocabulary are refused."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise DataError(f"character ids must lie in [0, {VOCAB_SIZE}), got {int(ids.min())}..{int(ids.max())}")
    table = np.array(list(VOCAB) + [UNK_CHAR])
    return "".join(table[ids].tolist())


@functools.lru_cache(maxsize=1)
def _corpus_ids() -> np.ndarray:
    ids = encode(corpus_text())
    ids.setflags(write=False)
    return ids


def windows(ids: np.ndarray, context: int = CONTEXT) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of ``ids``: ``x`` (N, context) and ``y`` = the next ids, (N, context)."""
    n = (len(ids) - 1) // context
    x = np.array(ids[:n * context], dtype=np.int64).reshape(n, context)
    y = np.array(ids[1:n * context + 1], dtype=np.int64).reshape(n, context)
    return x, y


def text_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` int64 arrays of shape (N, CONTEXT) of the ``train`` or ``test`` split (fresh copies)."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split '{split}' (expected 'train' or 'test')")
    ids = _corpus_ids()
    cut = int(round(len(ids) * (1 - TEST_FRACTION)))
    return windows(ids[:cut] if split == "train" else ids[cut:])
