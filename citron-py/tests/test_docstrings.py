"""Every docstring example of the public API runs and gives what it shows."""

from __future__ import annotations

import doctest
import inspect
from typing import Any, Iterator, Tuple

import pytest

import citron


def documented() -> Iterator[Tuple[str, Any]]:
    yield "citron", citron
    for name in citron.__all__:
        obj = getattr(citron, name)
        if not inspect.isclass(obj):
            continue
        yield f"citron.{name}", obj
        for attr in vars(obj):
            if attr.startswith("_"):
                continue
            # getattr, not vars(): a staticmethod's docstring is on the function it wraps.
            member = getattr(obj, attr)
            if isinstance(getattr(member, "__doc__", None), str):
                yield f"citron.{name}.{attr}", member


def public_api_members() -> Iterator[Tuple[str, Any]]:
    for name in citron.__all__:
        obj = getattr(citron, name)
        if inspect.isclass(obj) and obj.__module__ == "citron" and not name.endswith("Dict"):
            yield name, obj
            for attr in vars(obj):
                if not attr.startswith("_"):
                    yield f"{name}.{attr}", getattr(obj, attr)


@pytest.mark.parametrize("name,obj", list(documented()), ids=lambda v: v if isinstance(v, str) else "")
def test_docstring_examples(name: str, obj: Any) -> None:
    doc = obj.__doc__ or ""
    test = doctest.DocTestParser().get_doctest(doc, {"citron": citron}, name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} docstring example(s) failed (output above)"


@pytest.mark.parametrize("name,obj", list(public_api_members()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_member_is_documented(name: str, obj: Any) -> None:
    assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_every_public_class_and_method_has_an_example() -> None:
    missing = [
        name
        for name, obj in public_api_members()
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and ">>>" not in (obj.__doc__ or "")
    ]
    assert missing == []
