"""List every SurgeonError message of the package, where it is raised, and the tests that assert it.

    python tools/error_table.py [--untested] > tools/errors.md

Each message is shown as a template (``{...}`` where a value is formatted in). A test "asserts"
a message when it holds a text of at least 14 characters that is part of the message's
literal text (what ``in r.stderr`` or ``pytest.raises(match=...)`` compare); messages built
only from values show no test. A message no input can reach (an invariant of the engine's own
making) is marked "internal" with its reason: a ``# internal: REASON`` comment on the raise's
line or the line above it; a message starting "internal:" without one shows "internal: no
reason given". The table is generated, not kept: run it again after changing a message.
"""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _template(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{...}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _template(node.left) + _template(node.right)
    return "{...}"


_INTERNAL = re.compile(r"#\s*internal:\s*(.+)$")


def _internal_reason(lines: list[str], lineno: int, message: str) -> str | None:
    """Why no input reaches the message at `lineno` (1-based), from a `# internal:` comment there or just above."""
    for line in (lines[lineno - 1], lines[lineno - 2] if lineno > 1 else ""):
        m = _INTERNAL.search(line)
        if m:
            return m.group(1).strip()
    return "no reason given" if message.startswith("internal:") else None


def messages() -> list[dict]:
    found = []
    for path in sorted((ROOT / "weightsurgeon").rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text, str(path))
        functions = {}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(fn):
                    functions.setdefault(id(sub), fn.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "SurgeonError" \
                    and node.args:
                message = " ".join(_template(node.args[0]).split())
                found.append({"message": message,
                              "where": f"{path.relative_to(ROOT)}:{node.lineno}",
                              "function": functions.get(id(node), "<module>"),
                              "internal": _internal_reason(lines, node.lineno, message)})
    return found


def _tests() -> dict[str, set[str]]:
    """test function name -> the string constants in its source, its decorators and the module-level
    tables they name (a parametrized case table: the texts it can assert)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        tables = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                  for t in node.targets if isinstance(t, ast.Name)}
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
                texts = set()
                named = [tables[n.id] for d in fn.decorator_list for n in ast.walk(d)
                         if isinstance(n, ast.Name) and n.id in tables]
                for node in (n for root in [fn, *named] for n in ast.walk(root)):
                    if isinstance(node, ast.Constant) and isinstance(node.value, str):
                        texts.add(" ".join(node.value.split()))
                    elif isinstance(node, ast.JoinedStr):
                        texts.update(" ".join(v.value.split()) for v in node.values if isinstance(v, ast.Constant))
                pieces = set()
                for t in texts:  # a pytest.raises(match=...) regex: its literal runs
                    for piece in re.split(r"\.\*|\.\+|\||\\[dswDSW][+*]?|[()\[\]^$?]", t.replace("\\.", ".")):
                        piece = piece.replace("\\", "").strip(" :;,.'\"")
                        if len(piece) >= MIN_MATCH:
                            pieces.add(piece)
                out[f"{path.name}::{fn.name}"] = pieces
    return out


MIN_MATCH = 14  # a shorter text ("not a file") would match many messages


def _asserted_by(message: str, tests: dict[str, set[str]]) -> list[str]:
    """Tests holding a text of at least MIN_MATCH characters that is part of the message's literal text
    (what ``in r.stderr`` or ``pytest.raises(match=...)`` compare)."""
    parts = [p for p in message.split("{...}") if p.strip()]
    return [name for name, texts in tests.items() if any(t in part for t in texts for part in parts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--untested", action="store_true", help="Only messages no test asserts and not internal.")
    args = ap.parse_args()
    tests = _tests()
    rows = []
    for m in messages():
        rows.append((m, _asserted_by(m["message"], tests)))
    print("# Every SurgeonError message\n")
    print("Generated by `python tools/error_table.py > tools/errors.md`; regenerate it after changing a message.\n")
    print("| message | raised in | asserted by |")
    print("| --- | --- | --- |")
    for m, hits in rows:
        if args.untested and (hits or m["internal"]):
            continue
        shown = ", ".join(hits[:2]) + (f" (+{len(hits) - 2})" if len(hits) > 2 else "") if hits else \
            f"internal: {m['internal']}" if m["internal"] else "-"
        print(f"| {m['message'].replace('|', '/')} | {m['where']} ({m['function']}) | {shown} |")
    tested = sum(1 for _, h in rows if h)
    internal = sum(1 for m, h in rows if not h and m["internal"])
    print(f"\n{len(rows)} messages, {tested} asserted by a test, {internal} internal (no input reaches them), "
          f"{len(rows) - tested - internal} neither")


if __name__ == "__main__":
    main()
