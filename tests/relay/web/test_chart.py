"""The report page's chart (relay/web/chart.py): points in, SVG out, read back as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from relay.web.chart import (
    HEIGHT,
    NOTHING,
    PLOT_HEIGHT,
    TOP,
    WIDTH,
    X_LABELS,
    Point,
    chart_with_numbers,
    compact,
    numbers_table,
    series_chart,
)

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
START = datetime(2026, 11, 1, tzinfo=UTC)
LABEL = "Attempts, bounces and bounce rate per day"


def days(*counts: tuple[int, int]) -> list[Point]:
    return [Point(START + i * DAY, a, b) for i, (a, b) in enumerate(counts)]


def svg(markup: str) -> ET.Element:
    root = ET.fromstring(markup)
    assert root.tag == "svg"
    return root


def group(root: ET.Element, name: str) -> ET.Element:
    found = root.find(f"g[@class='{name}']")
    assert found is not None, name
    return found


def texts(element: ET.Element) -> list[str]:
    return [t.text or "" for t in element.iter("text")]


def titles(element: ET.Element) -> list[str]:
    return [t.text or "" for t in element.iter("title")]


def test_a_chart_is_an_image_named_for_screen_readers_that_fills_the_width():
    """role=img with the label as its name and title; a viewBox at width 100% (it scales
    down on a phone); no inline style anywhere."""
    markup = series_chart(days((100, 5), (80, 9)), DAY, LABEL, threshold=5)
    root = svg(markup)
    assert root.get("role") == "img" and root.get("aria-label") == LABEL
    assert root.get("viewbox") == f"0 0 {WIDTH} {HEIGHT}" and root.get("width") == "100%"
    assert root.get("height") is None
    assert titles(root)[0] == LABEL
    assert "style" not in markup


def test_axes_have_ticks_labels_and_names():
    """Counts on the left (0 to a round top above the largest), the rate in percent on the
    right (up to at least the threshold), the days under the x axis."""
    root = svg(series_chart(days((100, 5), (80, 9), (0, 0)), DAY, LABEL, threshold=5))
    counts = texts(group(root, "axis-counts"))
    assert counts[0] == "0" and counts[-2] == "100" and counts[-1] == "count"
    assert [int(c) for c in counts[:-1]] == sorted(int(c) for c in counts[:-1])
    rates = texts(group(root, "axis-rate"))
    assert rates[0] == "0%" and rates[-1] == "bounce rate"
    assert all(r.endswith("%") for r in rates[:-1])
    assert float(rates[-2].rstrip("%")) >= 100 * 9 / 80
    assert texts(group(root, "axis-time")) == ["2026-11-01", "2026-11-02", "2026-11-03", "UTC"]


def test_hourly_labels_show_the_hour_and_are_few_enough_to_read():
    points = [Point(START + i * HOUR, 10, 1) for i in range(48)]
    labels = texts(group(svg(series_chart(points, HOUR, LABEL)), "axis-time"))[:-1]
    assert len(labels) <= X_LABELS
    assert labels[0] == "11-01 00:00" and labels[1] == "11-01 06:00"


def test_the_legend_sits_above_every_bar():
    """Legend: attempts, bounces, the rate, the threshold; all of it above the plot, where
    the tallest bar starts."""
    root = svg(series_chart(days((100, 100), (100, 50)), DAY, LABEL, threshold=5))
    legend = group(root, "legend")
    assert texts(legend) == ["attempts", "bounces", "bounce rate (right axis)", "threshold 5%"]
    lowest_legend = max(
        float(e.get("y", e.get("cy", e.get("y2", "0")))) + float(e.get("height", "0"))
        for e in legend
    )
    bars = group(root, "bars").findall("rect")
    assert lowest_legend < TOP <= min(float(b.get("y", "0")) for b in bars)
    assert "threshold" not in " ".join(texts(svg(series_chart(days((1, 1)), DAY, LABEL))))


def test_every_bar_and_dot_has_its_numbers_to_hover():
    root = svg(series_chart(days((1234, 5), (80, 9)), DAY, LABEL))
    bars = group(root, "bars").findall("rect")
    assert len(bars) == 4
    first = "2026-11-01 UTC: 1,234 attempts, 5 bounces, bounce rate 0.41%"
    assert [titles(b) for b in bars[:2]] == [[first], [first]]
    dots = group(root, "rate").findall("circle")
    assert [titles(d)[0] for d in dots] == [
        first,
        "2026-11-02 UTC: 80 attempts, 9 bounces, bounce rate 11.25%",
    ]
    assert len(group(root, "rate").findall("polyline")) == 1


def test_a_hostile_label_is_text():
    """A campaign name in the label is escaped: the title reads back exactly it."""
    hostile = 'campaigns <script>alert(1)</script>, "x" & <b>y</b>'
    markup = series_chart(days((3, 1)), DAY, hostile)
    assert "<script>" not in markup and "<b>" not in markup
    root = svg(markup)
    assert titles(root)[0] == hostile and root.get("aria-label") == hostile
    table = numbers_table(days((3, 1)), DAY, hostile)
    assert "<script>" not in table and "&lt;script&gt;" in table


@pytest.mark.parametrize("points", [[], days((0, 0), (0, 0))])
def test_nothing_to_draw_says_so(points):
    assert series_chart(points, DAY, LABEL) == f'<p class="muted">{NOTHING}</p>'
    assert chart_with_numbers(points, DAY, LABEL) == f'<p class="muted">{NOTHING}</p>'


def test_one_point():
    """Two bars, a dot and no line (a line needs two points); the bars reach the top tick."""
    root = svg(series_chart(days((10, 2)), DAY, LABEL))
    assert len(group(root, "bars").findall("rect")) == 2
    assert len(group(root, "rate").findall("circle")) == 1
    assert group(root, "rate").findall("polyline") == []
    assert texts(group(root, "axis-time")) == ["2026-11-01", "UTC"]


def test_slots_without_attempts_have_no_rate_and_break_the_line():
    """Bounces without attempts (bounce messages only): bars, but no dot and a gap."""
    root = svg(series_chart(days((10, 1), (10, 2), (0, 4), (10, 1), (10, 1)), DAY, LABEL))
    rate = group(root, "rate")
    assert len(rate.findall("circle")) == 4
    assert len(rate.findall("polyline")) == 2
    assert "2026-11-03 UTC: 0 attempts, 4 bounces, bounce rate no attempts" in titles(root)
    only_bounces = svg(series_chart(days((0, 4)), DAY, LABEL))
    assert group(only_bounces, "rate").findall("circle") == []


def test_huge_numbers_stay_inside_the_plot_with_short_labels():
    huge = 10**15
    root = svg(series_chart(days((huge, huge // 3), (huge // 2, 7)), DAY, LABEL))
    for bar in group(root, "bars").findall("rect"):
        y, height = float(bar.get("y", "0")), float(bar.get("height", "0"))
        assert y >= TOP - 0.1 and height <= PLOT_HEIGHT + 0.1
    counts = texts(group(root, "axis-counts"))[:-1]
    assert counts[-1] == "1,000T" and max(len(c) for c in counts) <= 6
    assert "1,000,000,000,000,000 attempts" in titles(root)[1]
    for element in root.iter():
        for name in ("x", "x1", "x2", "cx"):
            if element.get(name) is not None:
                assert 0 <= float(element.get(name, "0")) <= WIDTH


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (9_999, "9,999"),
        (10_000, "10k"),
        (12_500, "12.5k"),
        (3_000_000, "3M"),
        (1_250_000_000, "1.25B"),
        (10**15, "1,000T"),
    ],
)
def test_compact_counts(n, text):
    assert compact(n) == text


def test_the_numbers_table_has_a_row_per_slot():
    table = numbers_table(days((1234, 5), (0, 2)), DAY, LABEL)
    assert "<td>2026-11-01</td>" in table and '<td class="n">1,234</td>' in table
    assert '<td class="n">0.41%</td>' in table and '<td class="n">no attempts</td>' in table
    assert table.count("<tr>") == 3


def test_slots_of_several_days_name_their_first_and_last_day():
    week = 7 * DAY
    points = [Point(START, 10, 1), Point(datetime(9999, 12, 25, tzinfo=UTC), 10, 1)]
    assert (
        titles(svg(series_chart(points, week, LABEL)))[1:3]
        == ["2026-11-01 to 2026-11-07 UTC: 10 attempts, 1 bounces, bounce rate 10.00%"] * 2
    )
    assert "9999-12-25 to 9999-12-31 UTC" in titles(svg(series_chart(points, week, LABEL)))[3]
