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
        for attr, member in vars(obj).items():
            if attr.startswith("_") and attr not in ("__new__", "__init__"):
                continue
            doc = getattr(member, "__doc__", None)
            if isinstance(doc, str):
                yield f"citron.{name}.{attr}", member


def public_api_members() -> Iterator[Tuple[str, Any]]:
    for name in citron.__all__:
        obj = getattr(citron, name)
        if inspect.isclass(obj) and obj.__module__ == "citron" and not name.endswith("Dict"):
            yield name, obj
            for attr, member in vars(obj).items():
                if not attr.startswith("_"):
                    yield f"{name}.{attr}", member


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


def test_every_public_class_has_an_example() -> None:
    missing = [
        n
        for n in citron.__all__
        if inspect.isclass(getattr(citron, n))
        and getattr(citron, n).__module__ == "citron"
        and ">>>" not in (getattr(citron, n).__doc__ or "")
    ]
    # FetchError and ServerError need a network failure or a taken port to show; their use is in
    # the tests and the README.
    assert set(missing) <= {"FetchError", "ServerError"}, missing
