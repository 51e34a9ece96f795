"""The report page's chart: attempts, bounces and the bounce rate over time, drawn on the
server as inline SVG (no script, nothing loaded from outside), and the same numbers as a
table for whoever cannot see it.

Pure: points in, ``Markup`` out, built only with ``relay.web.html.element`` (so every text,
a campaign name in the label included, is escaped). The drawing is a ``viewBox`` of fixed
units shown at ``width="100%"``: it fills a 1280 px screen and shrinks with a phone's.

Counts (attempts and bounces, a pair of bars per time slot) read on the left axis; the
bounce rate (a line with a dot per slot, and the threshold as a dashed line) in percent on
the right one. The legend sits above the plot, never over a bar. Each bar and dot has a
``<title>``: hovering shows the slot's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from relay.web.html import Markup, concat, element, table

__all__ = ["Point", "chart_with_numbers", "compact", "numbers_table", "series_chart", "slot_label"]

# The drawing's units (the viewBox); the browser scales them to the page's width.
WIDTH, HEIGHT = 1200, 380
LEFT, RIGHT, TOP, BOTTOM = 72, 72, 52, 48  # margins: axis labels, legend, date labels
PLOT_WIDTH, PLOT_HEIGHT = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
X_LABELS = 8  # at most this many date labels under the axis: each has room for its text
TICKS = 5  # about this many steps up each axis
ATTEMPTS_COLOUR, BOUNCES_COLOUR, RATE_COLOUR = "#9db4cf", "#c0392b", "#1f3a5f"
THRESHOLD_COLOUR, GRID_COLOUR, AXIS_COLOUR = "#a00", "#e4e4e4", "#777"
NOTHING = "No attempts or bounces in this period."


@dataclass(frozen=True)
class Point:
    """One time slot: the attempts and bounces that began in [at, at + the chart's step)."""

    at: datetime
    attempts: int
    bounces: int

    @property
    def rate(self) -> float | None:
        """Bounces per attempt in percent; None without attempts."""
        return 100 * self.bounces / self.attempts if self.attempts else None


def _day(at: datetime) -> str:
    """YYYY-MM-DD, four digits of year even before 1000 (strftime's %Y gives "1")."""
    return at.date().isoformat()


def slot_label(at: datetime, step: timedelta) -> str:
    """A slot as text: its hour, its day, or its first and last day."""
    if step < timedelta(days=1):
        return f"{_day(at)} {at:%H:%M}"
    if step == timedelta(days=1):
        return _day(at)
    try:
        last = at + step - timedelta(days=1)
    except OverflowError:  # the calendar's last slot, cut at its end
        last = datetime.max
    return f"{_day(at)} to {_day(last)}"


def _axis_label(at: datetime, step: timedelta) -> str:
    """The short text under the x axis: the hour with its day, or the (first) day."""
    return f"{at:%m-%d %H:%M}" if step < timedelta(days=1) else _day(at)


def _rate_text(rate: float | None) -> str:
    return "no attempts" if rate is None else f"{rate:.2f}%"


def _hover(point: Point, step: timedelta) -> str:
    return (
        f"{slot_label(point.at, step)} UTC: {point.attempts:,} attempts, "
        f"{point.bounces:,} bounces, bounce rate {_rate_text(point.rate)}"
    )


def _nice_step(span: float) -> float:
    """A round step (1, 2 or 5 times a power of ten) that cuts ``span`` into about TICKS."""
    raw = span / TICKS
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _scale(highest: float, *, whole: bool) -> tuple[float, float]:
    """The axis' top and step: round numbers at or above ``highest`` (whole ones for counts)."""
    step = _nice_step(highest) if highest > 0 else 1.0
    if whole:
        step = max(1.0, float(round(step)))
    return math.ceil(highest / step) * step if highest > 0 else step * TICKS, step


def compact(n: float) -> str:
    """A count short enough for the axis: 9,999, 12.5k, 3M, 1,500T."""
    for size, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if n >= size and n >= 10_000:
            value = n / size
            places = 0 if value >= 100 else 1 if value >= 10 else 2
            text = f"{value:,.{places}f}"
            return (text.rstrip("0").rstrip(".") if "." in text else text) + unit
    return f"{round(n):,}"


def _percent(value: float, step: float) -> str:
    places = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:.{places}f}%"


def _n(value: float) -> str:
    """A coordinate: one decimal is finer than a pixel."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _legend(threshold: float | None) -> Markup:
    """Above the plot, left to right: swatches and lines, each with its words."""
    y = 18
    items: list[Markup] = []
    x = float(LEFT)
    for colour, words in ((ATTEMPTS_COLOUR, "attempts"), (BOUNCES_COLOUR, "bounces")):
        items.append(element("rect", x=_n(x), y=y - 10, width=12, height=12, fill=colour))
        items.append(element("text", words, x=_n(x + 18), y=y))
        x += 110
    items.append(
        element(
            "line", x1=_n(x), y1=y - 4, x2=_n(x + 22), y2=y - 4, stroke=RATE_COLOUR, stroke_width=2
        )
    )
    items.append(element("circle", cx=_n(x + 11), cy=y - 4, r=3, fill=RATE_COLOUR))
    items.append(element("text", "bounce rate (right axis)", x=_n(x + 28), y=y))
    if threshold is None:
        return element("g", *items, class_="legend")
    x += 210
    items.append(
        element(
            "line",
            x1=_n(x),
            y1=y - 4,
            x2=_n(x + 22),
            y2=y - 4,
            stroke=THRESHOLD_COLOUR,
            stroke_width="1.5",
            stroke_dasharray="5 3",
        )
    )
    items.append(element("text", f"threshold {threshold:g}%", x=_n(x + 28), y=y))
    return element("g", *items, class_="legend")


def _count_axis(top: float, step: float) -> Markup:
    parts: list[Markup] = []
    for i in range(round(top / step) + 1):
        value = i * step
        y = TOP + PLOT_HEIGHT - value / top * PLOT_HEIGHT
        parts.append(
            element("line", x1=LEFT, y1=_n(y), x2=LEFT + PLOT_WIDTH, y2=_n(y), stroke=GRID_COLOUR)
        )
        parts.append(element("text", compact(value), x=LEFT - 6, y=_n(y + 4), text_anchor="end"))
    parts.append(element("text", "count", x=LEFT - 6, y=TOP - 12, text_anchor="end"))
    return element("g", *parts, class_="axis-counts")


def _rate_axis(top: float, step: float) -> Markup:
    parts: list[Markup] = []
    x = LEFT + PLOT_WIDTH
    for i in range(round(top / step) + 1):
        value = i * step
        y = TOP + PLOT_HEIGHT - value / top * PLOT_HEIGHT
        parts.append(element("line", x1=x, y1=_n(y), x2=x + 4, y2=_n(y), stroke=AXIS_COLOUR))
        parts.append(element("text", _percent(value, step), x=x + 7, y=_n(y + 4)))
    parts.append(element("text", "bounce rate", x=x + 6, y=TOP - 12, text_anchor="middle"))
    return element("g", *parts, class_="axis-rate")


def _time_axis(points: Sequence[Point], step: timedelta, slot: float) -> Markup:
    bottom = TOP + PLOT_HEIGHT
    every = max(1, math.ceil(len(points) / X_LABELS))
    parts: list[Markup] = [
        element("line", x1=LEFT, y1=bottom, x2=LEFT + PLOT_WIDTH, y2=bottom, stroke=AXIS_COLOUR),
        element("line", x1=LEFT, y1=TOP, x2=LEFT, y2=bottom, stroke=AXIS_COLOUR),
        element(
            "line",
            x1=LEFT + PLOT_WIDTH,
            y1=TOP,
            x2=LEFT + PLOT_WIDTH,
            y2=bottom,
            stroke=AXIS_COLOUR,
        ),
    ]
    for i in range(0, len(points), every):
        x = LEFT + (i + 0.5) * slot
        parts.append(
            element("line", x1=_n(x), y1=bottom, x2=_n(x), y2=bottom + 4, stroke=AXIS_COLOUR)
        )
        parts.append(
            element(
                "text",
                _axis_label(points[i].at, step),
                x=_n(x),
                y=bottom + 18,
                text_anchor="middle",
            )
        )
    parts.append(element("text", "UTC", x=LEFT + PLOT_WIDTH, y=bottom + 38, text_anchor="end"))
    return element("g", *parts, class_="axis-time")


def _bars(points: Sequence[Point], step: timedelta, slot: float, top: float) -> Markup:
    bar = slot * 0.4  # two bars fill 80% of their slot; the rest parts the slots
    bottom = TOP + PLOT_HEIGHT
    rects: list[Markup] = []
    for i, point in enumerate(points):
        hover = _hover(point, step)
        for offset, value, colour in (
            (0.1, point.attempts, ATTEMPTS_COLOUR),
            (0.5, point.bounces, BOUNCES_COLOUR),
        ):
            height = value / top * PLOT_HEIGHT
            rects.append(
                element(
                    "rect",
                    element("title", hover),
                    x=_n(LEFT + (i + offset) * slot),
                    y=_n(bottom - height),
                    width=_n(bar),
                    height=_n(height),
                    fill=colour,
                )
            )
    return element("g", *rects, class_="bars")


def _rate_line(
    points: Sequence[Point], step: timedelta, slot: float, top: float, threshold: float | None
) -> Markup:
    """The rate's line, broken where a slot had no attempts (no rate), a dot per slot, and
    the threshold across the plot."""
    bottom = TOP + PLOT_HEIGHT
    parts: list[Markup] = []
    if threshold is not None:
        y = _n(bottom - threshold / top * PLOT_HEIGHT)
        parts.append(
            element(
                "line",
                element("title", f"threshold {threshold:g}%"),
                x1=LEFT,
                y1=y,
                x2=LEFT + PLOT_WIDTH,
                y2=y,
                stroke=THRESHOLD_COLOUR,
                stroke_width="1.5",
                stroke_dasharray="5 3",
            )
        )
    runs: list[list[str]] = [[]]
    dots: list[Markup] = []
    for i, point in enumerate(points):
        if point.rate is None:
            runs.append([])
            continue
        x, y = _n(LEFT + (i + 0.5) * slot), _n(bottom - point.rate / top * PLOT_HEIGHT)
        runs[-1].append(f"{x},{y}")
        dots.append(
            element(
                "circle", element("title", _hover(point, step)), cx=x, cy=y, r=3, fill=RATE_COLOUR
            )
        )
    for run in runs:
        if len(run) > 1:
            parts.append(
                element(
                    "polyline",
                    points=" ".join(run),
                    fill="none",
                    stroke=RATE_COLOUR,
                    stroke_width=2,
                )
            )
    return element("g", *parts, *dots, class_="rate")


def series_chart(
    points: Sequence[Point], step: timedelta, label: str, threshold: float | None = None
) -> Markup:
    """Attempts and bounces as bars (left axis) and the bounce rate as a line (right axis,
    percent, with ``threshold`` dashed) per slot of ``step``, the slots in time order;
    ``label`` says what it shows (the svg's title and its name for screen readers). Without
    an attempt or a bounce in any slot: a sentence saying so."""
    if not any(p.attempts or p.bounces for p in points):
        return element("p", NOTHING, class_="muted")
    count_top, count_step = _scale(max(max(p.attempts, p.bounces) for p in points), whole=True)
    rates = [p.rate for p in points if p.rate is not None]
    rate_top, rate_step = _scale(max([*rates, threshold or 0.0]), whole=False)
    slot = PLOT_WIDTH / len(points)
    return element(
        "svg",
        element("title", label),
        _legend(threshold),
        _count_axis(count_top, count_step),
        _rate_axis(rate_top, rate_step),
        _bars(points, step, slot, count_top),
        _rate_line(points, step, slot, rate_top, threshold),
        _time_axis(points, step, slot),
        role="img",
        aria_label=label,
        viewbox=f"0 0 {WIDTH} {HEIGHT}",
        width="100%",
        class_="chart",
    )


def numbers_table(points: Sequence[Point], step: timedelta, caption: str) -> Markup:
    """The chart's numbers, a row per slot."""
    unit = "hour" if step < timedelta(days=1) else "day" if step == timedelta(days=1) else "days"
    rows = (
        [slot_label(p.at, step), f"{p.attempts:,}", f"{p.bounces:,}", _rate_text(p.rate)]
        for p in points
    )
    return table(
        [f"{unit} (UTC)", "attempts", "bounces", "bounce rate"],
        rows,
        numeric=(1, 2, 3),
        caption=caption,
    )


def chart_with_numbers(
    points: Sequence[Point], step: timedelta, label: str, threshold: float | None = None
) -> Markup:
    """``series_chart`` and, folded under it, ``numbers_table``."""
    chart = series_chart(points, step, label, threshold)
    if not any(p.attempts or p.bounces for p in points):
        return chart
    numbers = element(
        "details",
        element("summary", "Numbers behind the chart"),
        numbers_table(points, step, label),
    )
    # In a box of its own that scrolls sideways: on a phone the chart keeps a readable size
    # (shell.STYLE gives it a minimum width) instead of shrinking its labels away.
    return concat(element("div", chart, class_="scroll chartbox"), numbers)
