"""The tools an agent may be given by name.

Built-ins are registered here. A host product adds its own plain Python functions either
with the `@register_tool` decorator or by listing dotted paths in the `AGENTOS_EXTRA_TOOLS`
setting; the function's name, signature and docstring are what the model sees. This module
does not import agno: agno wraps the functions when an agent is built.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

ToolFunction = Callable[..., Any]

_registry: dict[str, ToolFunction] = {}
_extra_loaded = False


def register_tool(func: ToolFunction) -> ToolFunction:
    """Register a function as a tool under its own name."""
    _registry[func.__name__] = func
    return func


def _load_extra_tools() -> None:
    global _extra_loaded
    if _extra_loaded:
        return
    for path in getattr(settings, "AGENTOS_EXTRA_TOOLS", []):
        register_tool(import_string(path))
    _extra_loaded = True


def tool_registry() -> dict[str, ToolFunction]:
    """Every registered tool by name."""
    _load_extra_tools()
    return dict(_registry)


def tool_names() -> list[str]:
    """The names an agent's `tools` field may hold."""
    return sorted(tool_registry())


def get_tools(names: list[str]) -> list[ToolFunction]:
    """The functions for these names; unknown names are skipped (validated on save)."""
    registry = tool_registry()
    return [registry[name] for name in names if name in registry]


@register_tool
def current_datetime() -> str:
    """Return the current date and time in UTC, in ISO 8601 format."""
    return datetime.now(UTC).isoformat(timespec="seconds")


_BINARY_OPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "log": math.log,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
# Bounds keep a request from making the server compute 9**9**9.
_MAX_EXPONENT = 1000
_MAX_EXPRESSION = 200


class CalculatorError(ValueError):
    """An expression the calculator cannot evaluate."""


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise CalculatorError("exponent too large")
        return _BINARY_OPS[type(node.op)](left, right)  # type: ignore[no-any-return,unused-ignore]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return,unused-ignore]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*(_evaluate(arg) for arg in node.args))
    raise CalculatorError(f"unsupported expression: {ast.dump(node)[:60]}")


@register_tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as "(2 + 3) * 4" or "sqrt(16)"; return the result."""
    expression = expression.strip().replace("^", "**").replace("\u00d7", "*").replace("\u00f7", "/")
    if len(expression) > _MAX_EXPRESSION:
        return "Error: expression too long"
    try:
        result = _evaluate(ast.parse(expression, mode="eval"))
    except (
        CalculatorError,
        SyntaxError,
        ZeroDivisionError,
        OverflowError,
        ValueError,
        TypeError,
    ) as exc:
        return f"Error: {exc}"
    if isinstance(result, float) and result.is_integer() and abs(result) < 1e15:
        result = int(result)
    return str(result)
