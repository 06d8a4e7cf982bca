"""List every SurgeonError message of the package, where it is raised, and the tests that assert it.

    python tools/error_table.py [--markdown] [--untested]

Each message is shown as a template (``{...}`` where a value is formatted in). A test "asserts"
a message when it holds a text of at least 14 characters that is part of the message's
literal text (what ``in r.stderr`` or ``pytest.raises(match=...)`` compare); messages built
only from values show no test. The table is generated, not kept:
run it again after changing a message.
"""
from __future__ import annotations

import argparse
import ast
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


def messages() -> list[dict]:
    found = []
    for path in sorted((ROOT / "weightsurgeon").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        functions = {}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(fn):
                    functions.setdefault(id(sub), fn.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "SurgeonError" \
                    and node.args:
                found.append({"message": " ".join(_template(node.args[0]).split()),
                              "where": f"{path.relative_to(ROOT)}:{node.lineno}",
                              "function": functions.get(id(node), "<module>")})
    return found


def _tests() -> dict[str, set[str]]:
    """test function name -> the string constants in its source (the texts it can assert)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
                texts = set()
                for node in ast.walk(fn):
                    if isinstance(node, ast.Constant) and isinstance(node.value, str):
                        texts.add(" ".join(node.value.split()))
                    elif isinstance(node, ast.JoinedStr):
                        texts.update(" ".join(v.value.split()) for v in node.values if isinstance(v, ast.Constant))
                out[f"{path.name}::{fn.name}"] = {t.strip(" :;,.'\"") for t in texts if len(t.strip(" :;,.'\"")) >= MIN_MATCH}
    return out


MIN_MATCH = 14  # a shorter text ("not a file") would match many messages


def _asserted_by(message: str, tests: dict[str, set[str]]) -> list[str]:
    """Tests holding a text of at least MIN_MATCH characters that is part of the message's literal text
    (what ``in r.stderr`` or ``pytest.raises(match=...)`` compare)."""
    parts = [p for p in message.split("{...}") if p.strip()]
    return [name for name, texts in tests.items() if any(t in part for t in texts for part in parts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--untested", action="store_true", help="Only messages no test asserts.")
    args = ap.parse_args()
    tests = _tests()
    rows = []
    for m in messages():
        rows.append((m, _asserted_by(m["message"], tests)))
    print("| message | raised in | asserted by |")
    print("| --- | --- | --- |")
    for m, hits in rows:
        if args.untested and hits:
            continue
        shown = ", ".join(hits[:2]) + (f" (+{len(hits) - 2})" if len(hits) > 2 else "") if hits else "-"
        print(f"| {m['message'].replace('|', '/')} | {m['where']} ({m['function']}) | {shown} |")
    tested = sum(1 for _, h in rows if h)
    print(f"\n{len(rows)} messages, {tested} asserted by a test, {len(rows) - tested} not")


if __name__ == "__main__":
    main()
