"""Rows of `surgeon diff --spectrum`: the top singular values of each selected delta matrix.

`share_k` is the share of ||B - A||_F^2 that the top k singular values hold (sum of
sigma_i^2 for i < k over the squared Frobenius norm, computed in float64 from the same
float32 delta): 1.0 at k = 1 means a rank-one change. For k above the matrix rank, the
share is that of all of them.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

KS = (1, 8, 64, 256)
SPECTRUM_CSV = "report_spectrum.csv"


@dataclass
class SpectrumRow:
    """One delta matrix of one tuned model."""

    tuned: str
    name: str
    layer: int | None
    module: str
    shape: tuple[int, ...]
    energy: float  # ||B - A||_F^2 of the float32 delta
    sigma: list[float] = field(default_factory=list)  # the top singular values, largest first
    method: str = ""

    def share(self, k: int) -> float:
        if self.energy <= 0 or not math.isfinite(self.energy):
            return math.nan
        return min(1.0, sum(s * s for s in self.sigma[:k]) / self.energy)

    def to_dict(self) -> dict:
        def num(x: float) -> Any:
            return x if math.isfinite(x) else None

        return {"tuned": self.tuned, "name": self.name, "layer": self.layer, "module": self.module,
                "shape": list(self.shape), "energy": num(self.energy), "method": self.method,
                **{f"share_top{k}": num(self.share(k)) for k in KS}, "sigma": [num(s) for s in self.sigma]}

    @classmethod
    def from_dict(cls, d: dict) -> "SpectrumRow":
        return cls(tuned=d["tuned"], name=d["name"], layer=d["layer"], module=d["module"], shape=tuple(d["shape"]),
                   energy=math.nan if d.get("energy") is None else float(d["energy"]),
                   sigma=[math.nan if s is None else float(s) for s in d.get("sigma") or []], method=d.get("method", ""))


def write_spectrum_csv(rows: Iterable[SpectrumRow], path: str | Path) -> Path:
    """report_spectrum.csv: one row per delta matrix; the shares, then sigma_1..sigma_8."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["tuned", "name", "layer", "module", "shape", "l2_delta", "method",
                         *[f"share_top{k}" for k in KS], *[f"sigma_{i + 1}" for i in range(8)]])
        for r in rows:
            shares = [r.share(k) for k in KS]
            top = (list(r.sigma[:8]) + [math.nan] * 8)[:8]
            writer.writerow([r.tuned, r.name, "" if r.layer is None else r.layer, r.module, "x".join(map(str, r.shape)),
                             repr(math.sqrt(r.energy)) if r.energy >= 0 else "", r.method,
                             *["" if not math.isfinite(x) else repr(x) for x in shares + top]])
    return path
