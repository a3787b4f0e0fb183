"""The README's example of citron.Client runs as it is and prints what it says."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_results_example_runs() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    example = [b for b in blocks if "citron.Client(" in b and "open_run" in b]
    assert len(example) == 1, "the README has no single results example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example[0], str(README), "exec"), {"__name__": "readme_example"})
    assert out.getvalue().splitlines() == ["b'kernel bytes'", "['v6.9']", "403", "deploy run 1 True"]
