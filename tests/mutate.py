"""Text mutations the fuzzers of configuration files share (TOML and JSON, for the daemon and for esp's files):
character edits from the format's own alphabet, snippets that reach a parser's corners, and line splices, so a
few edits turn a valid file into one that is almost valid."""
from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st


def mutate_text(data: st.DataObject, text: str, alphabet: str, snippets: Sequence[str]) -> str:
    """1 to 6 edits of ``text``, drawn from ``data``."""
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        kind = data.draw(st.sampled_from(["replace", "insert", "delete", "snippet", "splice", "dup"]))
        pos = data.draw(st.integers(0, len(text)))
        if kind == "replace" and pos < len(text):
            text = text[:pos] + data.draw(st.sampled_from(alphabet)) + text[pos + 1:]
        elif kind == "insert":
            text = text[:pos] + data.draw(st.text(alphabet, max_size=8)) + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + data.draw(st.integers(1, 40)):]
        elif kind == "snippet":
            text = text[:pos] + data.draw(st.sampled_from(list(snippets))) + text[pos:]
        elif kind in ("splice", "dup"):
            lines = text.split("\n")
            i, j = data.draw(st.integers(0, len(lines) - 1)), data.draw(st.integers(0, len(lines) - 1))
            if kind == "splice":
                lines[i] = lines[j]
            else:
                lines.insert(i, lines[j])
            text = "\n".join(lines)
    return text
