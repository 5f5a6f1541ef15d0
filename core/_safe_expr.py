"""The evaluator behind `safe_expr`: an expression is checked against a whitelist of AST node
types and compiled into plain closures when the condition is built; `eval` never runs.

What an expression may contain (Burr 0.43's `safe_expr` grammar):
- literals: `int`, `float`, `str`, `bool`, `None`, and tuple / list / set / dict displays;
- names: a state field, or one of the functions `len abs min max sum all any str int float
  bool` (called by bare name, positional arguments only);
- attribute reads whose name does not start with `__`, subscripts and slices;
- comparisons `== != < <= > >= in not in is is not`, `and`, `or`, `not`, unary `-` / `+`,
  and `+ - * / // % **`.
Anything else (calls of anything but those functions, lambdas, comprehensions, `x if c else
y`, walrus, dunder attributes, `**` in a dict display) is rejected when the expression is
built. Beyond Burr, `**` and sequence repetition refuse results that would be huge, so that
an untrusted expression cannot exhaust memory or hang the step.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

from fanwise.core._parsing import parse
from fanwise.core.errors import GraphError

Evaluator = Callable[[Mapping[str, Any]], Any]

FUNCTIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f for f in (len, abs, min, max, sum, all, any, str, int, float, bool)
}
_CONSTANT_TYPES = (int, float, str, bool, type(None))
_MAX_RESULT_BITS = 1 << 20
"""`**` on integers refuses results above a million bits (about 315,000 digits)."""
_MAX_REPEAT = 10_000_000
"""`sequence * n` refuses results above ten million items."""


def _power(base: Any, exponent: Any) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if base.bit_length() * exponent > _MAX_RESULT_BITS:
            raise ValueError(f"safe_expr: {base} ** {exponent} is too large to compute")
    return base**exponent


def _multiply(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        if isinstance(count, int) and isinstance(seq, str | bytes | list | tuple):
            if len(seq) * count > _MAX_REPEAT:
                raise ValueError(
                    f"safe_expr: repeating {len(seq)} items {count} times is too large"
                )
    return left * right


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.Not: operator.not_,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


class SafeExpression:
    """A checked expression: `names` are the state fields it reads, `evaluate(fields)` its
    value over a mapping that holds them."""

    def __init__(self, source: str) -> None:
        try:
            tree = parse(source, mode="eval")
        except SyntaxError as exc:
            raise GraphError(f"safe_expr {source!r} is not a valid expression: {exc}") from exc
        self.source = source
        self._names: dict[str, None] = {}
        self.evaluate: Evaluator = self._compile(tree.body)

    @property
    def names(self) -> list[str]:
        return sorted(self._names)

    def _reject(self, node: ast.AST, why: str) -> GraphError:
        return GraphError(
            f"safe_expr {self.source!r}: {why} is not allowed (column {node.col_offset}); "
            "allowed are state fields, literals, comparisons, arithmetic, and/or/not, "
            f"attribute reads, subscripts and calls of {sorted(FUNCTIONS)}"
        )

    def _compile(self, node: ast.expr) -> Evaluator:
        handler = getattr(self, f"_compile_{type(node).__name__}", None)
        if handler is None:
            raise self._reject(node, f"a {type(node).__name__} node")
        return handler(node)

    def _compile_Constant(self, node: ast.Constant) -> Evaluator:
        if not isinstance(node.value, _CONSTANT_TYPES):
            raise self._reject(node, f"a {type(node.value).__name__} literal")
        value = node.value
        return lambda fields: value

    def _compile_Name(self, node: ast.Name) -> Evaluator:
        name = node.id
        if name in FUNCTIONS:
            function = FUNCTIONS[name]
            return lambda fields: function
        self._names[name] = None
        return lambda fields: fields[name]

    def _compile_Attribute(self, node: ast.Attribute) -> Evaluator:
        if node.attr.startswith("__"):
            raise self._reject(node, f"the dunder attribute {node.attr!r}")
        target, attr = self._compile(node.value), node.attr
        return lambda fields: getattr(target(fields), attr)

    def _compile_Subscript(self, node: ast.Subscript) -> Evaluator:
        target, index = self._compile(node.value), self._compile(node.slice)
        return lambda fields: target(fields)[index(fields)]

    def _compile_Slice(self, node: ast.Slice) -> Evaluator:
        parts = [self._compile(p) if p is not None else None for p in (node.lower, node.upper,
                                                                        node.step)]
        return lambda fields: slice(*(p(fields) if p is not None else None for p in parts))

    def _compile_Compare(self, node: ast.Compare) -> Evaluator:
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise self._reject(node, f"the comparison {type(op).__name__}")
        ops = [_COMPARE[type(op)] for op in node.ops]
        left = self._compile(node.left)
        rights = [self._compile(c) for c in node.comparators]

        def compare(fields: Mapping[str, Any]) -> bool:
            current = left(fields)
            for op, right in zip(ops, rights, strict=True):  # chained: a < b < c
                following = right(fields)
                if not op(current, following):
                    return False
                current = following
            return True

        return compare

    def _compile_BoolOp(self, node: ast.BoolOp) -> Evaluator:
        values = [self._compile(v) for v in node.values]
        is_and = isinstance(node.op, ast.And)

        def boolean(fields: Mapping[str, Any]) -> Any:
            result: Any = is_and
            for value in values:  # short-circuits and returns the deciding operand, as Python
                result = value(fields)
                if bool(result) is not is_and:
                    return result
            return result

        return boolean

    def _compile_UnaryOp(self, node: ast.UnaryOp) -> Evaluator:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise self._reject(node, f"the operator {type(node.op).__name__}")
        operand = self._compile(node.operand)
        return lambda fields: op(operand(fields))

    def _compile_BinOp(self, node: ast.BinOp) -> Evaluator:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise self._reject(node, f"the operator {type(node.op).__name__}")
        left, right = self._compile(node.left), self._compile(node.right)
        return lambda fields: op(left(fields), right(fields))

    def _compile_Tuple(self, node: ast.Tuple) -> Evaluator:
        items = [self._compile(e) for e in node.elts]
        return lambda fields: tuple(item(fields) for item in items)

    def _compile_List(self, node: ast.List) -> Evaluator:
        items = [self._compile(e) for e in node.elts]
        return lambda fields: [item(fields) for item in items]

    def _compile_Set(self, node: ast.Set) -> Evaluator:
        items = [self._compile(e) for e in node.elts]
        return lambda fields: {item(fields) for item in items}

    def _compile_Dict(self, node: ast.Dict) -> Evaluator:
        if any(k is None for k in node.keys):
            raise self._reject(node, "'**' unpacking in a dict")
        pairs = [(self._compile(k), self._compile(v)) for k, v in zip(node.keys, node.values,
                                                                       strict=True)]
        return lambda fields: {k(fields): v(fields) for k, v in pairs}

    def _compile_Call(self, node: ast.Call) -> Evaluator:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise self._reject(node, f"calling {ast.unparse(node.func)!r}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self._reject(node, f"keyword or starred arguments to {node.func.id!r}")
        function = FUNCTIONS[node.func.id]
        args = [self._compile(a) for a in node.args]
        return lambda fields: function(*(arg(fields) for arg in args))
