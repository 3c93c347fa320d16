"""Statistics of benchmark rounds: median and quartiles, the per-tensor fit, ratios to a limit."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

import torch

GB = 1e9


@dataclass(frozen=True)
class Summary:
    """Rounds of one result: median and inter-quartile range (of seconds, or of ratios)."""

    median: float
    q1: float
    q3: float
    rounds: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def spread(self) -> float:
        """The inter-quartile range relative to the median."""
        return self.iqr / self.median if self.median else 0.0

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        data = sorted(values)
        if not data:
            raise ValueError("no rounds to summarise")
        median = statistics.median(data)
        q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive") if len(data) > 1 else (median, 0, median)
        return cls(median, q1, q3, len(data))


def throughput_ratio(nbytes: int, seconds: float, limit_bytes: int, limit_seconds: float) -> float:
    """A round's throughput as a fraction of its limit round's (taken with it): what a
    change of the machine's speed as a whole moves both of."""
    return (nbytes / seconds) / (limit_bytes / limit_seconds)


@dataclass(frozen=True)
class Fit:
    """``t = a·N + bytes/B``: fixed cost per tensor ``a`` and bandwidth ``B``, least squares."""

    seconds_per_tensor: float
    gbps: float
    r2: float

    @classmethod
    def of(cls, points: Iterable[tuple[int, int, float]]) -> Fit:
        """``points``: (tensor count N, bytes, seconds). Fits t = a·N + b·bytes (no free intercept:
        an empty load of nothing costs nothing beyond those two terms), minimising *relative*
        residuals: the 8,192-tensor points would otherwise drown the 1-tensor one, the only point
        where the bandwidth term is not small next to the per-tensor one."""
        rows = list(points)
        if len({n for n, _, _ in rows}) < 2:
            raise ValueError("the fit needs at least two different tensor counts")
        x = torch.tensor([[float(n), float(b)] for n, b, _ in rows], dtype=torch.float64)
        y = torch.tensor([t for _, _, t in rows], dtype=torch.float64)
        weight = (1 / y).unsqueeze(1)
        scale = x.abs().max(dim=0).values
        solution = (
            torch.linalg.lstsq(x * weight / scale, (y * weight.squeeze(1)).unsqueeze(1)).solution.squeeze(1) / scale
        )
        a, b = float(solution[0]), float(solution[1])
        predicted = x @ solution
        residual = float((((predicted - y) / y) ** 2).sum())
        total = float((((y - y.mean()) / y) ** 2).sum())
        return cls(a, 1 / b / GB if b > 0 else float("inf"), 1 - residual / total if total > 0 else 1.0)
