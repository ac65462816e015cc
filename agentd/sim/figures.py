"""The plots of ``agentd sim --report``, as Plotly figures (drawn by plotly.js in the page).

The network is laid out by networkx (ForceAtlas2: numpy only, no scipy, about 3 s at 1,000
nodes); each tally is a line whose colour and width grow with its balance, each node a dot
coloured by its net position; the clearing house is a star, referees wear a ring and nodes
a fault crashed (and the sim restarted) are crossed out.
"""

from __future__ import annotations

import math

import networkx as nx
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from agentd.bench import percentile
from agentd.sim.report import Report
from agentd.sim.scenario import Scenario

BALANCE_BANDS = 6  # tallies are drawn in this many bands of |balance| (one trace each)
NAMED_UP_TO = 40  # nodes are labelled on the picture in networks up to this size
FAULT_COLOURS = {"cut": "#f4a261", "partition": "#9b5de5", "crash": "#e63946",
                 "delay": "#3a86ff", "loss": "#8d6e63"}
MAX_BINS = 200  # bins on the throughput plot at most
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13}


def _layout(**extra) -> dict:
    return {"font": FONT, "margin": {"l": 50, "r": 20, "t": 40, "b": 40},
            "paper_bgcolor": "white", "plot_bgcolor": "white", **extra}


def _chip(milli: float) -> str:
    return f"{milli / 1000:,.3f} CHIP"


def network(scenario: Scenario, report: Report) -> go.Figure:
    graph = nx.Graph()
    graph.add_nodes_from(scenario.nodes)
    graph.add_edges_from(scenario.edges)
    pos = nx.forceatlas2_layout(graph, seed=scenario.seed,
                                max_iter=100 if len(graph) <= 300 else 50)
    balance = {(a, b): value for a, b, value in report.balances}
    top = max((abs(value) for value in balance.values()), default=0) or 1
    figure = go.Figure()
    bands: list[list[tuple[str, str]]] = [[] for _ in range(BALANCE_BANDS)]
    untallied = []
    for a, b in scenario.edges:
        if (a, b) in balance:
            bands[min(int(abs(balance[(a, b)]) / top * BALANCE_BANDS), BALANCE_BANDS - 1)
                  ].append((a, b))
        else:
            untallied.append((a, b))
    colours = sample_colorscale("YlOrRd", [0.25 + 0.75 * i / (BALANCE_BANDS - 1)
                                           for i in range(BALANCE_BANDS)])
    for band, links in enumerate(bands):
        if links:
            figure.add_trace(_lines(pos, links, colours[band], 0.8 + 3.2 * band
                                    / (BALANCE_BANDS - 1), "tallies"))
    if untallied:
        figure.add_trace(_lines(pos, untallied, "#bbbbbb", 1, "links (no tally)"))
    if balance:  # an invisible dot mid-tally: its hover text and the colour bar
        links = list(balance)
        figure.add_trace(go.Scatter(
            x=[(pos[a][0] + pos[b][0]) / 2 for a, b in links],
            y=[(pos[a][1] + pos[b][1]) / 2 for a, b in links], mode="markers",
            hoverinfo="text", showlegend=False, name="balances",
            text=[_owes(a, b, balance[(a, b)]) for a, b in links],
            marker={"size": 7, "opacity": 0, "color": [abs(v) / 1000 for v in balance.values()],
                    "colorscale": [[0, colours[0]], [1, colours[-1]]], "cmin": 0,
                    "cmax": top / 1000, "showscale": True, "colorbar": {
                        "title": {"text": "tally balance<br>(CHIP)"}, "x": 1.0, "len": 0.45,
                        "y": 0.98, "yanchor": "top"}}))
    net = {name: 0 for name in scenario.nodes}
    for (a, b), value in balance.items():
        net[a] += value
        net[b] -= value
    spread = max((abs(v) for v in net.values()), default=0) / 1000 or 1
    names = list(scenario.nodes)
    figure.add_trace(go.Scatter(
        x=[pos[n][0] for n in names], y=[pos[n][1] for n in names],
        mode="markers+text" if len(names) <= NAMED_UP_TO else "markers", name="nodes",
        text=names if len(names) <= NAMED_UP_TO else None, textposition="top center",
        hovertext=[f"{n}: {graph.degree[n]} links, net {_chip(net[n])}" for n in names],
        hoverinfo="text", marker={
            "size": [6 + 2 * math.sqrt(graph.degree[n]) for n in names],
            "color": [net[n] / 1000 for n in names], "colorscale": "RdBu", "cmid": 0,
            "cmin": -spread, "cmax": spread, "line": {"width": 1, "color": "#333"},
            "showscale": bool(balance), "colorbar": {
                "title": {"text": "node net<br>(CHIP)"}, "x": 1.0, "len": 0.45, "y": 0.02,
                "yanchor": "bottom"}}))
    xs, ys = [p[0] for p in pos.values()] or [0], [p[1] for p in pos.values()] or [0]
    special = {}
    if scenario.house:  # not on any tally: drawn above the network
        special[scenario.house] = ((min(xs) + max(xs)) / 2,
                                   max(ys) + 0.12 * (max(ys) - min(ys) or 1))
        figure.add_trace(go.Scatter(
            x=[special[scenario.house][0]], y=[special[scenario.house][1]],
            mode="markers+text", name="clearing house", text=["clearing house"],
            textposition="top center", hoverinfo="text", hovertext=[scenario.house],
            marker={"symbol": "star", "size": 22, "color": "#f5b700",
                    "line": {"width": 1, "color": "#333"}}))
    referees = [r for r in report.referees if r in pos or r in special]
    if referees:
        at = {**{n: tuple(pos[n]) for n in names}, **special}
        figure.add_trace(go.Scatter(
            x=[at[r][0] for r in referees], y=[at[r][1] for r in referees], mode="markers",
            name="referee", hoverinfo="text", hovertext=[f"{r}: referee" for r in referees],
            marker={"symbol": "circle-open", "size": 30, "color": "#2a9d8f",
                    "line": {"width": 3}}))
    crashed = [n for n in names if n in report.crashed]
    if crashed:
        figure.add_trace(go.Scatter(
            x=[pos[n][0] for n in crashed], y=[pos[n][1] for n in crashed], mode="markers",
            name="crashed, restarted", hoverinfo="text", hovertext=[
                f"{n}: crashed and restarted"
                + (f" ({report.crashed[n]} times)" if report.crashed[n] > 1 else "")
                for n in crashed],
            marker={"symbol": "x-thin", "size": 20, "color": FAULT_COLOURS["crash"],
                    "line": {"width": 3, "color": FAULT_COLOURS["crash"]}}))
    figure.update_layout(_layout(
        height=640, hovermode="closest", legend={"orientation": "h", "y": -0.02},
        xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
        title={"text": f"{len(names)} nodes, {len(scenario.edges)} links"
                       f"{f', {len(balance)} tallies' if balance else ''}"}))
    return figure


def _owes(a: str, b: str, balance: int) -> str:
    if balance == 0:
        return f"{a} and {b}: even"
    debtor, creditor = (b, a) if balance > 0 else (a, b)
    return f"{debtor} owes {creditor} {_chip(abs(balance))}"


def _lines(pos: dict, links: list[tuple[str, str]], colour: str, width: float,
           name: str) -> go.Scatter:
    xs: list[float | None] = []
    ys: list[float | None] = []
    for a, b in links:
        xs += [pos[a][0], pos[b][0], None]
        ys += [pos[a][1], pos[b][1], None]
    return go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", name=name,
                      legendgroup=name, showlegend=False,
                      line={"color": colour, "width": width})


def throughput(report: Report) -> go.Figure:
    """Calls done each second, by label, with the faults shaded where they ran: a rate over
    bins of 0.1 s to 10 s, so a short run and a long one both show their shape."""
    end = max((t for done in report.done_at.values() for t, _ in done), default=0.0)
    width = next((w for w in (0.1, 0.2, 0.5, 1, 2, 5) if end / w <= MAX_BINS), 10)
    figure = go.Figure()
    for label, series in report.rates(width).items():
        figure.add_trace(go.Scatter(x=[n * width for n in range(len(series))], y=series,
                                    name=label, mode="lines",
                                    line={"shape": "hv", "width": 2}))
    shapes, notes = [], []
    for fault in report.faults:
        start = report.traffic_at_s + fault["at_s"]
        stop = max(min(start + fault["for_s"], end), start + width)  # healed when traffic ends
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": start, "x1": stop,
                       "y0": 0, "y1": 1, "line": {"width": 0}, "layer": "below",
                       "fillcolor": FAULT_COLOURS.get(fault["kind"], "#999"), "opacity": 0.22})
        notes.append({"x": start, "y": 1, "xref": "x", "yref": "paper", "yanchor": "bottom",
                      "xanchor": "left", "text": fault["kind"], "showarrow": False,
                      "font": {"size": 11, "color": FAULT_COLOURS.get(fault["kind"], "#555")}})
    shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": report.traffic_at_s,
                   "x1": report.traffic_at_s, "y0": 0, "y1": 1,
                   "line": {"dash": "dot", "color": "#666", "width": 1}})
    notes.append({"x": report.traffic_at_s, "y": 0.98, "xref": "x", "yref": "paper",
                  "text": "traffic starts", "showarrow": False, "xanchor": "left",
                  "font": {"size": 11, "color": "#666"}})
    figure.update_layout(_layout(
        height=360, shapes=shapes, annotations=notes, hovermode="x unified",
        title={"text": f"done a second, over {width:g} s bins (faults shaded)"},
        xaxis={"title": {"text": "seconds since the nodes were up"}, "gridcolor": "#eee"},
        yaxis={"title": {"text": "per second"}, "gridcolor": "#eee", "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.25}))
    return figure


def latencies(report: Report) -> dict[str, go.Figure]:
    """A histogram of each call's latency per kind of traffic (and of ping round trips)."""
    samples = {f"{label} (a call)": values for label, values in report.call_ms.items()}
    if report.latencies_ms:
        samples["ping round trip"] = report.latencies_ms
    if report.lift_latencies_ms and not {"lifts", "clearing"} & set(report.call_ms):
        samples["lift to decision"] = report.lift_latencies_ms
    figures = {}
    for n, (label, values) in enumerate(samples.items()):
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        figure = go.Figure(go.Histogram(x=values, nbinsx=40, name=label,
                                        marker={"color": _PALETTE[n % len(_PALETTE)]}))
        figure.update_layout(_layout(
            height=280, bargap=0.05, margin={"l": 50, "r": 20, "t": 60, "b": 40},
            title={"text": f"{label}<br><sub>{len(values):,} samples, p50 {p50:.1f} ms, "
                           f"p99 {p99:.1f} ms</sub>", "font": {"size": 14}},
            xaxis={"title": {"text": "ms"}, "gridcolor": "#eee"},
            yaxis={"title": {"text": "calls"}, "gridcolor": "#eee"}))
        figures[label] = figure
    return figures


_PALETTE = ("#4361ee", "#2a9d8f", "#e76f51", "#8338ec", "#f4a261", "#3a86ff")


def debt(report: Report) -> go.Figure | None:
    """Total debt before and after clearing, when the run cleared any."""
    if report.debt_before is None or report.debt_after is None:
        return None
    figure = go.Figure(go.Bar(
        x=["before clearing", "after clearing"],
        y=[report.debt_before / 1000, report.debt_after / 1000],
        text=[_chip(report.debt_before), _chip(report.debt_after)], textposition="outside",
        marker={"color": ["#e76f51", "#2a9d8f"]}))
    figure.update_layout(_layout(height=300, title={"text": "total debt"},
                                 yaxis={"title": {"text": "CHIP"}, "gridcolor": "#eee"}))
    return figure
