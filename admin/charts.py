"""The console's charts, drawn with Altair so that what Streamlit's quick charts leave to chance is stated:
clock times on time axes, plain numbers with a visible zero, every series named in a legend that wraps
below the chart (and in a tooltip), and bins in value order."""

from __future__ import annotations

import itertools
from typing import Any

import altair as alt
import pandas as pd

# 0 reads "0", 0.0123 "0.0123", 10 "10", 12000 "12000": never "0.000000". The precision is explicit: without
# one, Vega derives it from the tick step, and a step of 5 made 10 read "1e+1".
NUMBER = ".6~g"
CLOCK = "%H:%M:%S"


def _legend() -> alt.Legend:
    # Below the chart, one entry a line, labels never cut: four versions' names must all be readable.
    return alt.Legend(orient="bottom", direction="vertical", labelLimit=0, title=None)


def time_chart(long: pd.DataFrame, value: str, height: int = 200) -> Any:
    """`long` has columns time (datetime), series and `value`: a line per series, a zero rule under them."""
    base = alt.Chart(long).encode(
        x=alt.X("time:T", title=None, axis=alt.Axis(format=CLOCK, labelAngle=0, tickCount=4)),
        y=alt.Y(f"{value}:Q", title=None, axis=alt.Axis(format=NUMBER), scale=alt.Scale(zero=True)),
        color=alt.Color("series:N", legend=_legend()),
        tooltip=[alt.Tooltip("series:N"), alt.Tooltip("time:T", format=CLOCK),
                 alt.Tooltip(f"{value}:Q", format=NUMBER)],
    )
    zero = alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="#888", strokeWidth=1).encode(y="y:Q")
    return alt.layer(zero, base.mark_line(point=True)).properties(height=height)


def bin_names(edges: list[float]) -> list[str]:
    """A histogram's bins in value order, named by their edges."""
    if not edges:
        return ["all"]
    return [f"< {edges[0]:g}", *(f"{a:g} to {b:g}" for a, b in itertools.pairwise(edges)), f">= {edges[-1]:g}"]


def bins_chart(names: list[str], reference: list[float], live: list[float], height: int = 220) -> Any:
    """Two distributions side by side per bin, the bins in the order given (their value order)."""
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        rows += [{"bin": name, "data": "validation data", "share": reference[i]},
                 {"bin": name, "data": "live", "share": live[i]}]
    return alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        x=alt.X("bin:N", sort=names, title=None, axis=alt.Axis(labelAngle=-30, labelLimit=0)),
        xOffset=alt.XOffset("data:N", sort=["validation data", "live"]),
        y=alt.Y("share:Q", title=None, axis=alt.Axis(format=NUMBER)),
        color=alt.Color("data:N", legend=_legend(), sort=["validation data", "live"]),
        tooltip=["bin:N", "data:N", alt.Tooltip("share:Q", format=NUMBER)],
    ).properties(height=height)
