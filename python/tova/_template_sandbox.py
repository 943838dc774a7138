"""The jinja2 environment chat templates render in: Hugging Face's (sandboxed, ``trim_blocks``,
``lstrip_blocks``, ``raise_exception``, ``tojson``, ``strftime_now``) with limits on what a
template may cost, since its text comes from a model file that anyone can write.

What is bounded, per rendering (:func:`budget` starts one):

- work: every item a ``{% for %}`` loop (or a recursive ``loop(...)``) takes, and every item a
  ``range()`` makes, counts against ``MAX_LOOP_ITEMS``, and a rendering may take at most
  ``MAX_RENDER_SECONDS`` (checked as it loops and makes values);
- size: no string or list a template makes (``~``, ``+``, ``*``, a filter's or a call's result)
  may pass ``MAX_RENDERED_CHARS`` items, and operations that would allocate more before
  returning (``'x' * n``, padding to a width: ``center``, ``ljust``, ``'%9999999999s'``,
  ``'{:>9999999999}'``; text made from many copies of one string: ``'{0}{0}'.format(s)``,
  ``'%s' % x``, ``join``, ``replace``, ``tojson``, a list printed or joined by ``~``) are
  refused before they run;
- what a template keeps (``namespace`` attributes, the only values that outlive a loop's
  iteration): at most ``MAX_KEPT_CHARS`` characters and items in all, nested at most
  ``MAX_NESTING`` deep (a tuple nested 200,000 deep crashes Python when hashed);
- jinja's ``lipsum`` global is not there, and jinja2 older than 3.1.6 (whose sandbox a template
  can escape: CVE-2025-27516) is refused.

Real templates stay orders of magnitude below each limit. A template over one raises
``ValueError`` naming it.
"""
from __future__ import annotations

import functools
import json
import re
import threading
import time
import weakref
from datetime import datetime
from typing import Any, Iterable, Iterator, Optional

__all__ = ["MAX_TEMPLATE_BYTES", "MAX_LOOP_ITEMS", "MAX_RENDERED_CHARS", "compile_template", "budget",
           "jinja2_module"]

MAX_TEMPLATE_BYTES = 1 << 20
MAX_LOOP_ITEMS = 1_000_000
MAX_RENDERED_CHARS = 8 << 20
MAX_INT_BITS = 1 << 16  # integers a template computes ('*', '**'): no arithmetic without end
MAX_RENDER_SECONDS = 5.0
MAX_KEPT_CHARS = 4 * MAX_RENDERED_CHARS
MAX_NESTING = 32
MIN_JINJA2 = (3, 1, 6)

_state = threading.local()

# A width or precision in a %-format or a str.format spec.
_STAR_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d*\.\*)")
_PERCENT_WIDTHS = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")
_BRACE_WIDTHS = re.compile(r"\{[^{}]*?:[^{}]*?(\d+)(?:\.(\d+))?[^{}]*\}")
_NESTED_SPEC = re.compile(r"\{[^{}]*:[^{}]*\{")
_PADDING_METHODS = frozenset(["center", "ljust", "rjust", "zfill", "expandtabs"])


def jinja2_module() -> Any:
    """jinja2 (3.1.6 or newer), or an ImportError saying which extra brings it."""
    try:
        import jinja2
    except ImportError as e:  # an optional dependency
        raise ImportError("chat templates need jinja2: pip install 'tova[chat]' (or jinja2)") from e
    version = tuple(int(p) if p.isdigit() else 0 for p in jinja2.__version__.split(".")[:3])
    if version < MIN_JINJA2:
        raise ImportError(f"chat templates need jinja2 >= 3.1.6 (this is {jinja2.__version__}, whose "
                          "sandbox a model's template can escape: CVE-2025-27516): "
                          "pip install -U 'jinja2>=3.1.6'")
    return jinja2


def budget() -> None:
    """Starts the work budget of one rendering (this thread's)."""
    _state.loop_items = MAX_LOOP_ITEMS
    _state.deadline = time.monotonic() + MAX_RENDER_SECONDS
    _state.kept = weakref.WeakKeyDictionary()  # namespace -> {attribute: size}
    _state.kept_total = 0


def _check_time() -> None:
    if time.monotonic() > getattr(_state, "deadline", float("inf")):
        raise ValueError(f"chat template: rendering took more than {MAX_RENDER_SECONDS:g} s")


def _spend(n: int) -> None:
    left = getattr(_state, "loop_items", MAX_LOOP_ITEMS) - n
    if left < 0:
        raise ValueError(f"chat template: its loops and range() calls exceed {MAX_LOOP_ITEMS} items")
    _state.loop_items = left
    _check_time()


def _extent(value: Any, what: str, limit: int = MAX_RENDERED_CHARS) -> int:
    """The characters ``value`` prints as, roughly (strings' lengths, each container item one
    more, every copy counted), walked without recursion and charged as loop items; a
    ValueError when over ``limit`` or nested deeper than ``MAX_NESTING``."""
    total, stack = 0, [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (list, tuple, dict)):
            if depth >= MAX_NESTING:
                raise ValueError(f"chat template: {what} is nested more than {MAX_NESTING} deep")
            items = list(v.items()) if isinstance(v, dict) else v
            _spend(len(items))
            total += len(items)
            stack.extend((x, depth + 1) for x in items)
        else:
            total += 8
        if total > limit:
            raise ValueError(f"chat template: {what} would be more than {limit} characters")
    return total


def _keep(namespace: Any, name: str, value: Any) -> None:
    """Charges what a namespace attribute keeps (see MAX_KEPT_CHARS)."""
    kept = getattr(_state, "kept", None)
    if kept is None:  # (outside a rendering: nothing to charge)
        return
    size = _extent(value, "a namespace value")
    sizes = kept.setdefault(namespace, {})
    total = _state.kept_total + size - sizes.get(name, 0)
    if total > MAX_KEPT_CHARS:
        raise ValueError(f"chat template: its namespace values would hold more than {MAX_KEPT_CHARS} characters")
    sizes[name] = size
    _state.kept_total = total


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
    _check_time()
    return value


def _printable(value: Any) -> Any:
    """A value about to be printed (output, ``~``): containers no larger than a rendering."""
    if isinstance(value, (list, tuple, dict)):
        _extent(value, "a printed value")
    return value


def _check_width(n: Any, what: str) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and n > MAX_RENDERED_CHARS:
        raise ValueError(f"chat template: {what} to a width of {n}, more than {MAX_RENDERED_CHARS}")


def _check_format(fmt: Any, pattern: "re.Pattern[str]") -> None:
    """The widths and precisions a format pads to, all together, within the limit."""
    if isinstance(fmt, str):
        total = 0
        for m in pattern.finditer(fmt):
            for g in m.groups():
                if g:  # (more than 9 digits is more than the limit, whatever they say)
                    total += int(g) if len(g) <= 9 else MAX_RENDERED_CHARS + 1
                    _check_width(total, "a format pads")


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
            node = self.generic_visit(node)
            node.nodes = [_wrap(nodes, "__tova_printable", n) for n in node.nodes]
            return _wrap(nodes, "__tova_sized", node)

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
                if isinstance(left, str):
                    args = right.values() if isinstance(right, dict) else right if isinstance(right, tuple) else (right,)
                    _check_copies(left, left.count("%"), args)
            return _sized(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
            if isinstance(owner, str) and name in _PADDING_METHODS:
                for a in (*args, *kwargs.values()):
                    _check_width(a, f"str.{__obj.__name__} pads")
            elif isinstance(owner, str) and name == "join" and args:
                items = list(args[0]) if not isinstance(args[0], (str, list, tuple, dict)) else args[0]
                _check_joined(owner, items)
                args = (items, *args[1:])
            elif isinstance(owner, str) and name == "replace" and len(args) >= 2:
                _check_replaced(owner, args[0], args[1])
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Any:  # 'spec'.format / .format_map, at access
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None
            fmt = value.__self__
            _check_format(fmt, _BRACE_WIDTHS)

            def checked(*args: Any, **kwargs: Any) -> Any:
                mapping = args[0].values() if value.__name__ == "format_map" and args else ()
                values = (*args, *kwargs.values(), *mapping)
                _check_copies(fmt, fmt.count("{"), values)
                if _NESTED_SPEC.search(fmt):  # ('{0:>{1}}': a width taken from an argument)
                    for a in values:
                        _check_width(a, "a format pads")
                return wrapped(*args, **kwargs)
            return checked

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
        if re.search(r"%[-_0^#]*\d{3,}", str(fmt)):  # (glibc pads to any width it is given)
            raise ValueError("chat template: strftime_now pads to a width of 100 or more")
        return datetime.now().strftime(fmt)

    class KeptNamespace(jinja2.utils.Namespace):
        """jinja's namespace, whose attributes (what outlives a loop's iteration) are charged."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: B902 (as jinja's)
            self = args[0]
            super(KeptNamespace, self).__init__(*args[1:], **kwargs)
            for name, value in dict(*args[1:], **kwargs).items():
                _keep(self, name, value)

        def __setitem__(self, name: str, value: Any) -> None:
            _keep(self, name, value)
            super().__setitem__(name, value)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols],
                             finalize=_printable)
    env.globals.pop("lipsum", None)
    env.globals["namespace"] = KeptNamespace
    env.globals["__tova_printable"] = _printable
    env.globals["range"] = _budgeted_range
    env.globals["__tova_loop"] = _loop_items
    env.globals["__tova_sized"] = _sized
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.filters["tojson"] = _checked_first(tojson, "tojson's text")
    for name in ("string", "pprint"):
        env.filters[name] = _checked_first(env.filters[name], f"the {name} filter's text")
    for name in ("center", "indent"):
        env.filters[name] = _width_checked(env.filters[name], name)
    env.filters["join"] = _join_checked(env.filters["join"])
    env.filters["replace"] = _replace_checked(env.filters["replace"])
    env.filters["format"] = _format_checked(env.filters["format"])
    for name in ("slice", "batch"):  # as many lists as their count: charged as loop items
        env.filters[name] = _count_charged(env.filters[name])
    return env.from_string(template)


def _check_copies(fmt: str, fields: int, args: Iterable[Any]) -> None:
    """A format with ``fields`` places filled from ``args``: refused when every place taking the
    largest argument would pass the limit (``'{0}' * 1000`` formatting one long string)."""
    largest = max((_extent(a, "a format's argument") for a in args), default=0)
    if len(fmt) + fields * largest > MAX_RENDERED_CHARS:
        raise ValueError(f"chat template: a format with {fields} places could make "
                         f"{len(fmt) + fields * largest} characters")


def _check_joined(sep: Any, items: Any) -> None:
    n = len(items) if hasattr(items, "__len__") else 0
    size = _extent(items, "a joined text") + (len(sep) if isinstance(sep, str) else 8) * n
    if size > MAX_RENDERED_CHARS:
        raise ValueError(f"chat template: a join would make {size} characters")


def _check_replaced(s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        places = s.count(old) if old else len(s) + 1
        if len(s) + places * len(new) > MAX_RENDERED_CHARS:
            raise ValueError(f"chat template: a replace would make {len(s) + places * len(new)} characters")


def _checked_first(f: Any, what: str) -> Any:
    @functools.wraps(f)
    def checked(*args: Any, **kwargs: Any) -> Any:
        # (jinja may pass its evaluation context first: the value is the first other argument)
        value = next((a for a in args if not type(a).__name__.endswith("Context")), None)
        _extent(value, what)
        return f(*args, **kwargs)
    return checked


def _join_checked(f: Any) -> Any:
    @functools.wraps(f)
    def checked(ctx: Any, value: Any, d: Any = "", *args: Any, **kwargs: Any) -> Any:
        items = list(value) if not isinstance(value, (str, list, tuple, dict)) else value
        _check_joined(d, items)
        return f(ctx, items, d, *args, **kwargs)
    return checked


def _replace_checked(f: Any) -> Any:
    @functools.wraps(f)
    def checked(ctx: Any, s: Any, old: Any, new: Any, *args: Any, **kwargs: Any) -> Any:
        _check_replaced(str(s), str(old), str(new))
        return f(ctx, s, old, new, *args, **kwargs)
    return checked


def _width_checked(f: Any, name: str) -> Any:
    @functools.wraps(f)
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        for a in (*args, *kwargs.values()):
            _check_width(a, f"the {name} filter pads")
            if isinstance(a, str) and isinstance(value, str):  # (indent by a string: each line)
                size = len(value) + len(a) * (value.count("\n") + 1)
                if size > MAX_RENDERED_CHARS:
                    raise ValueError(f"chat template: the {name} filter would make {size} characters")
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
