"""The README's examples of citron.Client (results, the pool) run as they are and print what
they say."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
from typing import List

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def run_example(marker: str) -> List[str]:
    """The lines printed by the README's one Python example that contains ``marker``."""
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    example = [b for b in blocks if marker in b]
    assert len(example) == 1, f"the README has no single example with {marker!r}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example[0], str(README), "exec"), {"__name__": "readme_example"})
    return out.getvalue().splitlines()


def test_the_readme_results_example_runs() -> None:
    assert run_example("open_run") == ["b'kernel bytes'", "['v6.9']", "403", "deploy run 1 True"]


def test_the_readme_pool_example_runs() -> None:
    assert run_example("reserve(") == ["['rack1-a', 'rack1-b'] allocated True", "released", "400"]
