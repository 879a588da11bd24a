"""The README's Python section runs as written: its ```python blocks are executed in order, in one
namespace, in a scratch directory; a comment ``# -> value`` after an expression states its value."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_to_run():
    assert len(_blocks()) >= 3


def test_the_readme_python_runs_as_written(tmp_path):
    ns: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, block in enumerate(_blocks()):
            try:
                exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
            except Exception as e:  # name the block, so a failure says where the README is wrong
                pytest.fail(f"README python block {i + 1} raised {type(e).__name__}: {e}\n{block}")
            for line in block.splitlines():
                m = re.match(r"\s*(?!#)(.+?)\s+#\s*->\s*(\S+(?: \S+)*?)(?:\s{2,}.*)?$", line)
                if m:
                    got, want = eval(m.group(1), ns), eval(m.group(2), ns)
                    assert got == pytest.approx(want, abs=1e-3) if isinstance(want, float) else got == want, line
    finally:
        os.chdir(cwd)
