"""Every public function documents its arguments, what it returns and what it raises
(Google style), and the documented arguments are exactly the signature's; every result
dataclass documents its fields under ``Attributes:``."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

import lossviz as lv

TITLES = "Args|Attributes|Returns|Yields|Raises|Example|Examples|Note|Notes|References"
SECTION = re.compile(rf"^\s*({TITLES}):\s*$", re.M)


def _public():
    import lossviz.dash as dash

    out = []
    for mod, names in ((lv, lv.__all__), (dash, dash.__all__)):
        for name in names:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                out.append((f"{mod.__name__}.{name}", obj, obj))
            elif inspect.isclass(obj) and not issubclass(obj, BaseException):
                init = obj.__dict__.get("__init__")
                # a hand-written constructor documents its arguments in the class docstring
                if init is not None and inspect.isfunction(init):
                    out.append((f"{mod.__name__}.{name}", obj, init))
    return out


def _section(doc: str, title: str = "Args") -> list[str]:
    m = re.search(rf"^(\s*){title}:\s*$", doc, re.M)
    if not m:
        return []
    indent = None
    names = []
    for line in doc[m.end() :].splitlines()[1:]:
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        if indent is None:
            indent = ind
        if ind < indent or SECTION.match(line):
            break
        if ind == indent:
            names.append(re.split(r"[\s:(]", line.strip(), maxsplit=1)[0].lstrip("*"))
    return names


PUBLIC = _public()


def test_the_public_api_is_found():
    names = {n for n, *_ in PUBLIC}
    assert "lossviz.hessian_eigs" in names and "lossviz.dash.landscape" in names
    assert "lossviz.Objective" in names


@pytest.mark.parametrize("name,owner,fn", PUBLIC, ids=[n for n, *_ in PUBLIC])
def test_documents_args_returns_raises(name, owner, fn):
    doc = inspect.getdoc(owner) or ""
    if dataclasses.is_dataclass(owner):
        fields = [f.name for f in dataclasses.fields(owner) if f.init]
        documented = _section(doc, "Attributes")
        missing = [f for f in fields if f not in documented]
        assert documented, f"{name}: no 'Attributes:' section"
        assert not missing, f"{name}: fields not documented under 'Attributes:': {missing}"
        return
    if owner is not fn and fn.__doc__:
        doc += "\n\n" + inspect.getdoc(fn)
    params = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if params:
        documented = _section(doc)
        assert documented, f"{name}: no 'Args:' section"
        missing = [p for p in params if p not in documented]
        extra = [d for d in documented if d not in params and d not in ("args", "kwargs", "kw")]
        assert not missing, f"{name}: arguments not documented: {missing}"
        assert not extra, f"{name}: documents arguments it does not take: {extra}"
    if owner is fn:
        assert re.search(r"^\s*(Returns|Yields):\s*$", doc, re.M), f"{name}: no 'Returns:'"
    assert re.search(r"^\s*Raises:\s*$", doc, re.M), f"{name}: no 'Raises:' section"
