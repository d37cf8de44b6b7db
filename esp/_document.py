"""The one way esp parses a document an operator wrote (a static gateway's JSON, a TOML SA file).

Why: Python's json and tomllib recurse once per level of nesting, so a file nested a few thousand levels deep
ends in RecursionError (or MemoryError) instead of the parser's own error, and a file that does parse may still
be nested deeper than any configuration is, which the code reading it should not have to walk. Both become
:class:`DocumentTooDeep`, a ValueError with a one-line reason that the caller turns into its own error naming the
file; syntax errors stay the parser's (json.JSONDecodeError, tomllib.TOMLDecodeError, both ValueErrors).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MAX_NESTING", "DocumentTooDeep", "parse_document"]

#: Arrays and tables (objects) inside each other. An SA file needs three levels ([[sa]] -> selector), a static
#: gateway file four; Python's parsers give up some hundreds of levels down.
MAX_NESTING = 32


class DocumentTooDeep(ValueError):
    """Arrays or tables nested deeper than :data:`MAX_NESTING`."""

    def __init__(self) -> None:
        super().__init__(f"arrays or tables nested more than {MAX_NESTING} deep")


def parse_document(parse: Callable[[str], Any], text: str) -> Any:
    """``parse(text)`` (``json.loads``, ``tomllib.loads``), refusing nesting deeper than :data:`MAX_NESTING`."""
    try:
        doc = parse(text)
    except (RecursionError, MemoryError):
        raise DocumentTooDeep() from None
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:  # iterative, so that checking the depth cannot overflow the stack either
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > MAX_NESTING:
            raise DocumentTooDeep()
        stack.extend((c, depth + 1) for c in children)
    return doc
