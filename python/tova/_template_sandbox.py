"""The jinja2 environment chat templates render in: Hugging Face's (sandboxed, ``trim_blocks``,
``lstrip_blocks``, ``raise_exception``, ``tojson``, ``strftime_now``) with limits on what a
template may cost, since its text comes from a model file that anyone can write.

What is bounded, per rendering (:func:`budget` starts one):

- work: every item a ``{% for %}`` loop (or a recursive ``loop(...)``) takes, and every item a
  ``range()`` makes, counts against ``MAX_LOOP_ITEMS``;
- size: no string or list a template makes (``~``, ``+``, ``*``, a filter's or a call's result)
  may pass ``MAX_RENDERED_CHARS`` items, and operations that would allocate more before
  returning (``'x' * n``, padding to a width: ``center``, ``ljust``, ``'%9999999999s'``,
  ``'{:>9999999999}'``) are refused before they run;
- jinja's ``lipsum`` global is not there.

Real templates stay orders of magnitude below each limit. A template over one raises
``ValueError`` naming it.
"""
from __future__ import annotations

import functools
import json
import re
import threading
from datetime import datetime
from typing import Any, Iterable, Iterator, Optional

__all__ = ["MAX_TEMPLATE_BYTES", "MAX_LOOP_ITEMS", "MAX_RENDERED_CHARS", "compile_template", "budget",
           "jinja2_module"]

MAX_TEMPLATE_BYTES = 1 << 20
MAX_LOOP_ITEMS = 1_000_000
MAX_RENDERED_CHARS = 8 << 20
MAX_INT_BITS = 1 << 16  # integers a template computes ('*', '**'): no arithmetic without end

_state = threading.local()

# A width or precision in a %-format or a str.format spec.
_STAR_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d*\.\*)")
_PERCENT_WIDTHS = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")
_BRACE_WIDTHS = re.compile(r"\{[^{}]*?:[^{}]*?(\d+)(?:\.(\d+))?[^{}]*\}")
_PADDING_METHODS = frozenset(["center", "ljust", "rjust", "zfill", "expandtabs"])


def jinja2_module() -> Any:
    """jinja2, or an ImportError saying which extra brings it."""
    try:
        import jinja2
    except ImportError as e:  # an optional dependency
        raise ImportError("chat templates need jinja2: pip install 'tova[chat]' (or jinja2)") from e
    return jinja2


def budget() -> None:
    """Starts the work budget of one rendering (this thread's)."""
    _state.loop_items = MAX_LOOP_ITEMS


def _spend(n: int) -> None:
    left = getattr(_state, "loop_items", MAX_LOOP_ITEMS) - n
    if left < 0:
        raise ValueError(f"chat template: its loops and range() calls exceed {MAX_LOOP_ITEMS} items")
    _state.loop_items = left


def _counted(items: Iterable[Any]) -> Iterator[Any]:
    for item in items:
        _spend(1)
        yield item


def _loop_items(items: Any) -> Any:
    """A loop's iterable, each item counted (jinja's loop helpers need len() where it has one)."""
    try:
        n = len(items)
    except TypeError:
        try:
            return _counted(iter(items))
        except TypeError:
            return items  # not iterable: jinja says so
    _spend(n)
    return items


def _sized(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_RENDERED_CHARS:
        raise ValueError(f"chat template: it made a value of {len(value)} items, more than {MAX_RENDERED_CHARS}")
    return value


def _check_width(n: Any, what: str) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_RENDERED_CHARS:
        raise ValueError(f"chat template: {what} to a width of {n}, more than {MAX_RENDERED_CHARS}")


def _check_format(fmt: Any, pattern: "re.Pattern[str]") -> None:
    if isinstance(fmt, str):
        for m in pattern.finditer(fmt):
            for g in m.groups():
                if g:  # (more than 9 digits is more than the limit, whatever they say)
                    _check_width(int(g) if len(g) <= 9 else MAX_RENDERED_CHARS + 1, "a format pads")


def _budgeted_range(*args: int) -> range:
    r = range(*args)
    _spend(len(r))
    return r


def _wrap(nodes: Any, helper: str, node: Any) -> Any:
    call = nodes.Call(nodes.Name(helper, "load"), [node], [], None, None)
    call.set_lineno(node.lineno)
    return call


@functools.lru_cache(maxsize=16)
def compile_template(template: str) -> Any:
    """The compiled template (cached by text)."""
    jinja2_module()  # (a clear error when jinja2 is missing)
    import jinja2.exceptions
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.visitor import NodeTransformer

    class Bound(NodeTransformer):
        """Loops count their items; concatenations, filters and calls check their results' size."""

        def visit_For(self, node: Any) -> Any:
            node = self.generic_visit(node)
            node.iter = _wrap(nodes, "__tova_loop", node.iter)
            return node

        def visit_Call(self, node: Any) -> Any:
            node = self.generic_visit(node)
            if isinstance(node.node, nodes.Name) and node.node.name == "loop" and node.args:
                node.args[0] = _wrap(nodes, "__tova_loop", node.args[0])  # a recursive loop's items
            return _wrap(nodes, "__tova_sized", node)

        def visit_Filter(self, node: Any) -> Any:
            return _wrap(nodes, "__tova_sized", self.generic_visit(node))

        def visit_Concat(self, node: Any) -> Any:
            return _wrap(nodes, "__tova_sized", self.generic_visit(node))

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "+", "%", "**"])

        def _parse(self, source: str, name: Optional[str], filename: Optional[str]) -> Any:
            tree = Bound().visit(super()._parse(source, name, filename))
            tree.set_environment(self)
            return tree

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, k in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(k, int) and len(seq) * k > MAX_RENDERED_CHARS:
                        raise ValueError(f"chat template: '*' would make {len(seq) * k} items")
                if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise ValueError(f"chat template: '*' would make an integer of more than {MAX_INT_BITS} bits")
            elif operator == "**":
                if (_is_int(left) and _is_int(right) and right > 0 and abs(left) > 1
                        and left.bit_length() * right > MAX_INT_BITS):
                    raise ValueError(f"chat template: '**' would make an integer of more than {MAX_INT_BITS} bits")
            elif operator == "%":
                _check_format(left, _PERCENT_WIDTHS)
                if isinstance(left, str) and _STAR_WIDTH.search(left):
                    raise ValueError("chat template: a '%' format takes its width from an argument ('*')")
            return _sized(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            if isinstance(getattr(__obj, "__self__", None), str) and getattr(__obj, "__name__", "") in _PADDING_METHODS:
                for a in (*args, *kwargs.values()):
                    _check_width(a, f"str.{__obj.__name__} pads")
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Any:  # 'spec'.format / .format_map, at access
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                _check_format(value.__self__, _BRACE_WIDTHS)
            return wrapped

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Optional[int] = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        # Hugging Face replaces jinja's tojson (which escapes HTML characters) with plain json.dumps.
        if isinstance(indent, str) and len(indent) > 64 or isinstance(indent, int) and indent > 64:
            raise ValueError("chat template: tojson indent wider than 64")
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals.pop("lipsum", None)
    env.globals["range"] = _budgeted_range
    env.globals["__tova_loop"] = _loop_items
    env.globals["__tova_sized"] = _sized
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.filters["tojson"] = tojson
    for name in ("center", "indent"):
        env.filters[name] = _width_checked(env.filters[name], name)
    env.filters["format"] = _format_checked(env.filters["format"])
    for name in ("slice", "batch"):  # as many lists as their count: charged as loop items
        env.filters[name] = _count_charged(env.filters[name])
    return env.from_string(template)


def _width_checked(f: Any, name: str) -> Any:
    @functools.wraps(f)
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        for a in (*args, *kwargs.values()):
            _check_width(a, f"the {name} filter pads")
        return f(value, *args, **kwargs)
    return checked


def _format_checked(f: Any) -> Any:
    @functools.wraps(f)
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_format(value, _PERCENT_WIDTHS)
        return f(value, *args, **kwargs)
    return checked


def _count_charged(f: Any) -> Any:
    # (jinja may pass its evaluation context first: the count is the first int argument)
    @functools.wraps(f)
    def charged(*args: Any, **kwargs: Any) -> Any:
        count = next((a for a in (*args, *kwargs.values()) if _is_int(a)), 0)
        _spend(max(0, count))
        return f(*args, **kwargs)
    return charged


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
