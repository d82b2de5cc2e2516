"""Charts drawn on the server as SVG geometry, so pages need no charting script."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

WIDTH = 600
HEIGHT = 160
AXIS = 20  # room under the bars for day labels


@dataclass(frozen=True)
class Bar:
    """One day's bar: position and size in the SVG's coordinates, and what it stands for."""

    x: float
    y: float
    width: float
    height: float
    day: date
    tokens: int
    runs: int
    label: str
    show_label: bool

    @property
    def center(self) -> float:
        """Where the bar's label goes."""
        return round(self.x + self.width / 2, 2)


@dataclass(frozen=True)
class BarChart:
    """A bar chart of tokens per day."""

    bars: list[Bar]
    width: int
    height: int
    plot_height: int
    peak: int
    total: int


def tokens_chart(days: list[dict[str, Any]]) -> BarChart:
    """Bars for tokens per day, scaled to the busiest day."""
    plot_height = HEIGHT - AXIS
    peak = max((int(day["tokens"]) for day in days), default=0)
    slot = WIDTH / max(len(days), 1)
    gap = min(4.0, slot * 0.2)
    # Label about seven days whatever the range, so labels never overlap.
    every = max(1, round(len(days) / 7))
    bars = []
    for index, day in enumerate(days):
        tokens = int(day["tokens"])
        # Days with some usage stay visible even beside a much busier day.
        height = 0.0 if not tokens else max(2.0, plot_height * tokens / peak)
        bars.append(
            Bar(
                x=round(index * slot + gap / 2, 2),
                y=round(plot_height - height, 2),
                width=round(slot - gap, 2),
                height=round(height, 2),
                day=day["day"],
                tokens=tokens,
                runs=int(day["runs"]),
                label=day["day"].strftime("%b %d"),
                show_label=(len(days) - 1 - index) % every == 0,
            )
        )
    return BarChart(
        bars=bars,
        width=WIDTH,
        height=HEIGHT,
        plot_height=plot_height,
        peak=peak,
        total=sum(bar.tokens for bar in bars),
    )
