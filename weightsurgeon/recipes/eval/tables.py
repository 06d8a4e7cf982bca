"""Terminal tables: one run's summary, and several runs side by side (the paper's Tables 1-2)."""
from __future__ import annotations

import csv
import io
from typing import Any, Sequence


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _acc_cell(m: dict[str, Any]) -> str:
    lo, hi = m["ci95"]
    return f"{_pct(m['accuracy'])} [{_pct(lo)}, {_pct(hi)}]"


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for task, m in results["tasks"].items():
        rows.append([
            task,
            str(m["problems"]),
            str(m["samples_per_problem"]),
            _acc_cell(m),
            f"{m['avg_thinking_tokens']:.0f}",
            f"{m['avg_answer_tokens']:.0f}",
            f"{m['avg_total_tokens']:.0f}",
        ])
    return rows


SUMMARY_HEADER = ["task", "problems", "samples", "accuracy % [95% CI]", "think tok", "answer tok", "total tok"]


def compare_rows(runs: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """Rows are runs, columns are each task's accuracy and average generated tokens."""
    tasks: list[str] = []
    for _, res in runs:
        for task in res["tasks"]:
            if task not in tasks:
                tasks.append(task)
    header = ["run", "model"]
    for task in tasks:
        header += [f"{task} acc %", f"{task} tokens"]
    rows = []
    for label, res in runs:
        row = [label, str(res.get("model", ""))]
        for task in tasks:
            m = res["tasks"].get(task)
            if m is None:
                row += ["-", "-"]
            else:
                row += [_acc_cell(m), f"{m['avg_total_tokens']:.0f}"]
        rows.append(row)
    return header, rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    # never wrap cells: a wide table scrolls in a terminal and stays one line per run in a log
    Console(width=max(80, sum(max([len(h)] + [len(r[i]) for r in rows]) + 3 for i, h in enumerate(header)) + 4)).print(table)


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
