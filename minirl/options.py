"""Click options made from config dataclasses, so `--help` shows each field's docstring.

CleanRL's `Args` dataclass, turned into a CLI the way `tyro` does it, in a few
lines: every field becomes `--field-name`, typed from its annotation, its
default from the dataclass (or an override), its help from the docstring
written under the field. The commands pass the options a user typed to
`minirl.runs.resolve`, where a value the dataclass rejects in
`__post_init__` becomes a click usage error naming the field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

import click

from minirl.config import field_kind


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass (from its source)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _parse(annotation: str) -> tuple[type, bool, bool, str]:
    """A field annotation -> (scalar or item type, is a tuple, is optional, its metavar)."""
    item, is_tuple, optional = field_kind(annotation)
    if is_tuple:
        name = {float: "X", int: "N", str: "NAME"}[item]
        meta = f"{name},..." if "..." in annotation else f"{name},{name}"
    else:
        meta = {int: "INT", float: "FLOAT", str: "TEXT"}[item]
    return item, is_tuple, optional, meta + ("|none" if optional else "")


class _Typed(click.ParamType):
    """Parse an option from its annotation: numbers, 'none', comma-separated tuples."""

    def __init__(self, annotation: str):
        self.item, self.is_tuple, self.optional, self.metavar = _parse(annotation)
        self.name = annotation

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        if self.optional and value.strip().lower() in ("none", ""):
            return None
        try:
            if self.is_tuple:
                return tuple(self.item(v.strip()) for v in value.split(",") if v.strip())
            return self.item(value)
        except ValueError:
            self.fail(f"{value!r} is not a valid {self.name}", param, ctx)


def _show(default) -> str | None:
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default)
    return None if default is None else str(default)


def dataclass_options(cls, defaults: dict | None = None, exclude: tuple = ()):
    """Decorator adding one click option per field of `cls` (defaults overridable)."""
    defaults = defaults or {}
    docs = field_docs(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in exclude or not f.init:
                continue
            default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
            flag = "--" + f.name.replace("_", "-")
            help_text = docs.get(f.name, "")
            if f.type in ("bool", bool):
                fn = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=default, show_default=True,
                                  help=help_text)(fn)
            else:
                typed = _Typed(str(f.type))
                fn = click.option(flag, f.name, type=typed, default=_show(default),
                                  metavar=typed.metavar, show_default=True, help=help_text)(fn)
        return fn

    return decorate
