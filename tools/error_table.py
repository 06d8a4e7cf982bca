"""List every SurgeonError message of the package, where it is raised, and the tests that assert it.

    python tools/error_table.py [--untested] > tools/errors.md

Each message is shown as a template (``{...}`` where a value is formatted in). A test "asserts"
a message when it holds a text that some instance of the message contains (what ``in r.stderr``
or ``pytest.raises(match=...)`` compare), with at least 14 characters of the message's literal
text in it: values may stand where the template has ``{...}``. A test's texts are the string
constants in its body and in the module-level tables its decorators name (table-driven tests).
A single word or path (``num_hidden_layers``) matches nothing: too many messages hold one.
A message passed as a variable is followed to what the function puts in it: a name to its
assignments (``msg = f"..."``) and the items appended to it, a call to the return values of the
package's function of that name, and a caught exception formatted into the message
(``except ValueError as e: raise SurgeonError(f"{path}: header refused: {e}")``) to each
``raise ValueError(...)`` of the functions the ``try`` calls: one row per message it can carry.
Messages still built only from values show no test; a ``# values: REASON`` comment says what
they carry (a SurgeonError re-raised with a file name in front is a row of its own already).
A message no input can reach (an invariant of the engine's own
making) is marked "internal" with its reason: a ``# internal: REASON`` comment on the raise's
line or the line above it; a message starting "internal:" without one shows "internal: no
reason given". A message no test here can reach (a GPU, a package that is not installed) says why in a
``# untested: REASON`` comment. The table is generated, not kept: run it again after changing a message.
"""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


MAX_VARIANTS = 24  # messages one raise may stand for, at most (a product of choices grows fast)


class _Context:
    """What `_expand` follows a value through: the package's functions by name, and the raise's own function."""

    def __init__(self, functions: dict[str, list[ast.FunctionDef]]) -> None:
        self.functions = functions

    def expand(self, node: ast.AST, fn: ast.AST | None, depth: int = 0) -> list[str]:
        """The message templates a string expression can give (``{...}`` where a value stands)."""
        if depth > 8:
            return ["{...}"]
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            out = [""]
            for v in node.values:
                if isinstance(v, ast.Constant):
                    pieces = [str(v.value)]
                else:
                    caught = self._caught(v.value, fn)
                    if not caught and isinstance(v.value, ast.Subscript):  # {problems[0]}: one of a list's items
                        caught = [t for t in self.expand(v.value, fn, depth + 1) if t != "{...}"]
                    pieces = caught if caught else ["{...}"]
                out = [a + b for a in out for b in pieces][:MAX_VARIANTS]
            return out
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.expand(node.left, fn, depth + 1), self.expand(node.right, fn, depth + 1)
            return [a + b for a in left for b in right][:MAX_VARIANTS]
        if isinstance(node, ast.IfExp):
            return self.expand(node.body, fn, depth + 1) + self.expand(node.orelse, fn, depth + 1)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            return self.expand(node.elt, fn, depth + 1)
        if isinstance(node, ast.Subscript):
            return self.expand(node.value, fn, depth + 1)
        if isinstance(node, ast.Name):
            caught = self._caught(node, fn)
            if caught:
                return caught
            return self._assigned(node.id, fn, depth) or ["{...}"]
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name == "str" and node.args:
                return self.expand(node.args[0], fn, depth + 1)
            defs = self.functions.get(name or "", [])
            if len(defs) == 1:
                returns = [r.value for r in ast.walk(defs[0]) if isinstance(r, ast.Return) and r.value is not None]
                out = [t for r in returns for t in self.expand(r, defs[0], depth + 1)]
                return out[:MAX_VARIANTS] or ["{...}"]
        return ["{...}"]

    def _assigned(self, name: str, fn: ast.AST | None, depth: int) -> list[str]:
        """What the function stores in `name`: its assignments and the items appended to it."""
        if fn is None:
            return []
        out: list[str] = []
        for sub in ast.walk(fn):
            if isinstance(sub, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in sub.targets):
                value = sub.value
            elif isinstance(sub, (ast.AnnAssign, ast.NamedExpr)) and isinstance(sub.target, ast.Name) \
                    and sub.target.id == name and sub.value is not None:
                value = sub.value
            elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr == "append" \
                    and isinstance(sub.func.value, ast.Name) and sub.func.value.id == name and sub.args:
                value = sub.args[0]
            else:
                continue
            if isinstance(value, (ast.Constant, ast.List, ast.Dict, ast.Tuple)) and not (
                    isinstance(value, ast.Constant) and isinstance(value.value, str)):
                continue  # an initial None / [] / {}: no text
            out += [t for t in self.expand(value, fn, depth + 1) if t not in out]
        return [t for t in out if t != "{...}"] or out

    def _caught(self, node: ast.AST, fn: ast.AST | None) -> list[str]:
        """For `e` bound by ``except X as e`` around the raise: the ``raise X(...)`` messages of the
        functions the ``try`` calls (X other than SurgeonError: one of those is a row of its own)."""
        if fn is None or not isinstance(node, ast.Name):
            return []
        for tr in ast.walk(fn):
            if not isinstance(tr, ast.Try):
                continue
            for handler in tr.handlers:
                if handler.name != node.id or handler.type is None:
                    continue
                kinds = {getattr(t, "id", getattr(t, "attr", "")) for t in
                         (handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type])}
                if "SurgeonError" in kinds or not any(sub is node for sub in ast.walk(handler)):
                    continue
                out: list[str] = []
                for call in (c for stmt in tr.body for c in ast.walk(stmt) if isinstance(c, ast.Call)):
                    callee = getattr(call.func, "id", getattr(call.func, "attr", None))
                    for d in self.functions.get(callee or "", []):
                        for r in ast.walk(d):
                            if isinstance(r, ast.Raise) and isinstance(r.exc, ast.Call) and r.exc.args and \
                                    getattr(r.exc.func, "id", None) in kinds:
                                out += [t for t in self.expand(r.exc.args[0], d, 6) if t not in out]
                return out
        return []


_INTERNAL = re.compile(r"#\s*internal:\s*(.+)$")


def _internal_reason(lines: list[str], lineno: int, message: str) -> str | None:
    """Why no input reaches the message at `lineno` (1-based), from a `# internal:` comment there or just above."""
    for line in (lines[lineno - 1], lines[lineno - 2] if lineno > 1 else ""):
        m = _INTERNAL.search(line)
        if m:
            return m.group(1).strip()
    return "no reason given" if message.startswith("internal:") else None


def _comment(lines: list[str], lineno: int, tag: str) -> str | None:
    """The text of a `# TAG: ...` comment on the raise's line or just above it."""
    for line in (lines[lineno - 1], lines[lineno - 2] if lineno > 1 else ""):
        m = re.search(rf"#\s*{tag}:\s*(.+)$", line)
        if m:
            return m.group(1).strip()
    return None


# Functions that build a SurgeonError from a literal first argument: the call sites are the messages.
BUILDERS = {"_problems": "{{...}} {}: {{...}}"}  # surgery._problems(kind, items): "N kind: item; item"


def messages() -> list[dict]:
    parsed = []
    functions: dict[str, list[ast.FunctionDef]] = {}
    for path in sorted((ROOT / "weightsurgeon").rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text, str(path))
        parsed.append((path, text.splitlines(), tree))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.setdefault(fn.name, []).append(fn)
    ctx = _Context(functions)
    found = []
    for path, lines, tree in parsed:
        owner: dict[int, ast.AST] = {}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(fn):
                    owner.setdefault(id(sub), fn)
        for node in ast.walk(tree):
            called = getattr(node.func, "id", getattr(node.func, "attr", None)) if isinstance(node, ast.Call) else None
            fn = owner.get(id(node))
            name = getattr(fn, "name", "<module>")
            if called == "SurgeonError" and node.args and name not in BUILDERS:
                shapes = ctx.expand(node.args[0], fn)
            elif called in BUILDERS and node.args:
                shapes = [BUILDERS[called].format(t) for t in ctx.expand(node.args[0], fn)]
            else:
                continue
            for template in dict.fromkeys(" ".join(t.split()) for t in shapes):
                found.append({"message": template,
                              "where": f"{path.relative_to(ROOT)}:{node.lineno}",
                              "function": name,
                              "internal": _internal_reason(lines, node.lineno, template),
                              "values": _comment(lines, node.lineno, "values"),
                              "untested": _comment(lines, node.lineno, "untested")})
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
        hits = _asserted_by(m["message"], tests)
        if hits:
            kind, shown = "tested", ", ".join(hits[:2]) + (f" (+{len(hits) - 2})" if len(hits) > 2 else "")
        elif m["internal"]:
            kind, shown = "internal", f"internal: {m['internal']}"
        elif _values_only(m["message"]):
            kind, shown = "values", f"built from values: {m['values']}" if m["values"] else VALUES
        elif m["untested"]:
            kind, shown = "untested", f"no test: {m['untested']}"
        else:
            kind, shown = "none", "-"
        rows.append((m, kind, shown))
    count = {k: sum(1 for _, kind, _ in rows if kind == k) for k in ("tested", "internal", "values", "untested", "none")}
    summary = (f"{len(rows)} messages: {count['tested']} asserted by a test, {count['internal']} internal (no input "
               f"reaches them), {count['values']} built from values only (each says what it carries), "
               f"{count['untested']} with no test and the reason why, {count['none']} with neither")
    print("# Every SurgeonError message\n")
    print("Generated by `python tools/error_table.py > tools/errors.md`; regenerate it after changing a message.\n")
    print(f"**{summary}.** A message counts as asserted when a test holds a text an instance of it contains "
          "(see the tool's docstring); a row per message a raise can carry.\n")
    print("| message | raised in | asserted by |")
    print("| --- | --- | --- |")
    for m, kind, shown in rows:
        if args.untested and kind not in ("none", "untested"):
            continue
        print(f"| {m['message'].replace('|', '/')} | {m['where']} ({m['function']}) | {shown} |")
    print(f"\n{summary}")


if __name__ == "__main__":
    main()
