"""List every SurgeonError message of the package, where it is raised, and the tests that assert it.

    python tools/error_table.py [--untested] > tools/errors.md

Each message is shown as a template (``{...}`` where a value is formatted in). A test "asserts"
a message when it holds a text that some instance of the message contains (what ``in r.stderr``
or ``pytest.raises(match=...)`` compare), with at least 14 characters of the message's literal
text in it: values may stand where the template has ``{...}``. A test's texts are the string
constants in its body and in the module-level tables its decorators name (table-driven tests).
A single word or path (``num_hidden_layers``) matches nothing: too many messages hold one.
Messages built only from values show no test. A message no input can reach (an invariant of the engine's own
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


# Functions that build a SurgeonError from a literal first argument: the call sites are the messages.
BUILDERS = {"_problems": "{{...}} {}: {{...}}"}  # surgery._problems(kind, items): "N kind: item; item"


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
            called = getattr(node.func, "id", getattr(node.func, "attr", None)) if isinstance(node, ast.Call) else None
            if called == "SurgeonError" and node.args and functions.get(id(node)) not in BUILDERS:
                message = " ".join(_template(node.args[0]).split())
            elif called in BUILDERS and node.args:
                message = " ".join(BUILDERS[called].format(_template(node.args[0])).split())
            else:
                continue
            found.append({"message": message,
                          "where": f"{path.relative_to(ROOT)}:{node.lineno}",
                          "function": functions.get(id(node), "<module>"),
                          "internal": _internal_reason(lines, node.lineno, message)})
    return found


def _strings(node: ast.AST) -> set[str]:
    texts = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            texts.add(" ".join(sub.value.split()))
        elif isinstance(sub, ast.JoinedStr):
            texts.update(" ".join(v.value.split()) for v in sub.values if isinstance(v, ast.Constant))
    return texts


def _tests() -> dict[str, set[str]]:
    """test function name -> the texts it can assert: the string constants in its body and in the
    module-level tables named by its decorators (``@pytest.mark.parametrize(..., CASES)``)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        tables = {}
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and node.value is not None:
                        tables[target.id] = _strings(node.value)
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_"):
                texts = _strings(fn)
                for deco in fn.decorator_list:
                    for name in ast.walk(deco):
                        if isinstance(name, ast.Name) and name.id in tables:
                            texts |= tables[name.id]
                pieces = set()
                for t in texts:  # the text itself, or a pytest.raises(match=...) regex's literal runs
                    runs = re.split(r"\.\*|\.\+|\||\\[dswDSW][+*]?|[()\[\]^$?]", t.replace("\\.", "."))
                    whole = t.replace("\\", "").strip()
                    core = whole.strip(" :;,.'\"")  # long enough without its edge punctuation, then tried with it too
                    for piece in ([whole, core] if len(core) >= MIN_MATCH else []) + \
                            [r.replace("\\", "").strip(" :;,.'\"") for r in runs]:
                        if len(piece) >= MIN_MATCH and not re.fullmatch(r"[\w.\-/]+", piece):
                            pieces.add(piece)
                out[f"{path.name}::{fn.name}"] = pieces
    return out


MIN_MATCH = 14  # a shorter text ("not a file") would match many messages
VALUE_END = 6  # a text that starts or ends in a value needs this many more of the message's characters


def _fits(text: str, parts: list[str], lead: bool, trail: bool) -> bool:
    """Whether some instance of the message contains ``text``, with at least MIN_MATCH of text's
    characters from the message's literal runs (``parts``; a value stands between two runs).

    The text ends inside a literal run or in the message's trailing value: a text that runs into a
    value in the middle of another message (``train.precision=fp8`` against ``train.precision={...}
    needs a GPU``) is not that message. A text that starts or ends in a value needs VALUE_END more."""
    if any(text in p for p in parts):
        return True
    starts = [(i + 1, k) for i, first in enumerate(parts) for k in range(1, min(len(text), len(first)) + 1)
              if first.endswith(text[:k])]
    starts += [(i, 0) for i in range(len(parts)) if i or lead]  # the text starts in the value before parts[i]
    return any(_rest_fits(text[k:], parts, i, k, trail, MIN_MATCH + (0 if k else VALUE_END)) for i, k in starts)


def _rest_fits(rest: str, parts: list[str], start: int, literal: int, trail: bool, need: int) -> bool:
    """rest = value, parts[start], value, ..., value, then a prefix of a later part (or the trailing value),
    with at least `need` characters of literal text in all."""
    pattern = ""
    for j in range(start, len(parts) + 1):
        if j == len(parts):
            return (trail and literal >= max(need, MIN_MATCH + VALUE_END)
                    and re.fullmatch(pattern + "(?s:.*)", rest) is not None)
        for m in range(1, min(len(rest), len(parts[j])) + 1):  # rest ends with the first m characters of parts[j]
            if (parts[j].startswith(rest[len(rest) - m:]) and literal + m >= need
                    and re.fullmatch(pattern + "(?s:.*)", rest[:len(rest) - m])):
                return True
        pattern += "(?s:.*)" + re.escape(parts[j])
        literal += len(parts[j])
    return False


def _asserted_by(message: str, tests: dict[str, set[str]]) -> list[str]:
    """Tests holding a text that an instance of the message contains (see the module docstring)."""
    parts = [p for p in message.split("{...}") if p.strip()]
    lead, trail = message.startswith("{...}"), message.endswith("{...}")
    grams = {p[i:i + 6] for p in parts for i in range(len(p) - 5)}
    hits = []
    for name, texts in tests.items():
        for t in texts:
            if any(t[i:i + 6] in grams for i in range(len(t) - 5)) and _fits(t, parts, lead, trail):
                hits.append(name)
                break
    return hits


VALUES = "built from values: the text is made before the raise (see there)"


def _values_only(message: str) -> bool:
    """A message with no literal words (``raise SurgeonError(msg)``): no test text can be matched to it."""
    return not re.sub(r"\{\.\.\.\}|\W", "", message)


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
            f"internal: {m['internal']}" if m["internal"] else VALUES if _values_only(m["message"]) else "-"
        print(f"| {m['message'].replace('|', '/')} | {m['where']} ({m['function']}) | {shown} |")
    tested = sum(1 for _, h in rows if h)
    internal = sum(1 for m, h in rows if not h and m["internal"])
    values = sum(1 for m, h in rows if not h and not m["internal"] and _values_only(m["message"]))
    print(f"\n{len(rows)} messages, {tested} asserted by a test, {internal} internal (no input reaches them), "
          f"{values} built from values only, {len(rows) - tested - internal - values} neither")


if __name__ == "__main__":
    main()
