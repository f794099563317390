"""The agent's tools: search an index, and a safe calculator.

```python
from llmlab.agents.tools import calculate, find_expression, search_tool
calculate("2 * (3 + 4) ** 2")                   # 98
find_expression("What is 12 / 4 + 1?")          # "12 / 4 + 1"
tool = search_tool(searcher, mode="hybrid", k=3) # a LangChain tool: tool.invoke({"query": "..."})
```

The calculator parses with ``ast`` and evaluates numbers and ``+ - * / ** %`` (and unary minus)
only: never ``eval``. Huge powers are refused so a question cannot stall the agent.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import re
from typing import Any, Protocol

from llmlab.errors import ConfigError

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow, ast.Mod: operator.mod}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CANDIDATE = re.compile(r"[\d.(][\d.\s()+\-*/%]*[\d.)]")
MAX_EXPONENT = 1000


class SearcherLike(Protocol):
    """What the agent needs from a searcher (``llmlab.rag.search.Searcher`` has it)."""

    def search(self, query: str, k: int = 5, mode: str = "hybrid", filters: dict | None = None) -> list[Any]: ...


def calculate(expression: str) -> float | int:
    """The value of an arithmetic expression of numbers and + - * / ** % (ConfigError otherwise)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ConfigError(f"'{expression}' is not an arithmetic expression.",
                          "Use numbers, parentheses and + - * / ** % only.") from None

    def ev(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ConfigError(f"The exponent {right} is too large (at most {MAX_EXPONENT}).")
            try:
                return _BINARY[type(node.op)](left, right)
            except ZeroDivisionError:
                raise ConfigError(f"'{expression}' divides by zero.") from None
        raise ConfigError(f"'{expression}' holds something other than numbers and + - * / ** %.",
                          "The calculator evaluates plain arithmetic only.")

    return ev(tree)


def find_expression(text: str) -> str | None:
    """The longest arithmetic expression in ``text`` with at least one operator, if any parses."""
    found = sorted((m.group().strip() for m in _CANDIDATE.finditer(text)), key=len, reverse=True)
    for cand in found:
        if re.search(r"\d\s*(\*\*|[+\-*/%])\s*[\d(.]", cand):
            try:
                calculate(cand)
                return cand
            except ConfigError:
                continue
    return None


def hit_dict(hit: Any) -> dict[str, Any]:
    """A search hit (``llmlab.rag.search.Hit`` or a mapping) as a plain dict the checkpointer can store."""
    d = dataclasses.asdict(hit) if dataclasses.is_dataclass(hit) else dict(hit)
    return {"chunk_id": str(d.get("chunk_id", d.get("doc_id", ""))), "doc_id": str(d.get("doc_id", "")),
            "title": str(d.get("title", "")), "text": str(d.get("text", "")), "score": float(d.get("score", 0.0)),
            "metadata": dict(d.get("metadata") or {})}


def search_tool(searcher: SearcherLike, *, mode: str = "hybrid", k: int = 3, filters: dict | None = None) -> Any:
    """A LangChain tool that searches the index and returns the hits as dicts."""
    from langchain_core.tools import StructuredTool

    def search_index(query: str) -> list[dict[str, Any]]:
        """Search the document index for passages about the query."""
        return [hit_dict(h) for h in searcher.search(query, k=k, mode=mode, filters=filters)]

    return StructuredTool.from_function(search_index)


def calculator_tool() -> Any:
    """A LangChain tool around ``calculate``."""
    from langchain_core.tools import StructuredTool

    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression of numbers and + - * / ** %."""
        value = calculate(expression)
        return str(int(value) if isinstance(value, float) and value.is_integer() else value)

    return StructuredTool.from_function(calculator)
