"""``agentd sim --report DIR``: the report as ``DIR/index.html``, one self-contained page.

The page carries plotly.js inline (the ``plotly`` package's own offline bundle, about
4.8 MB), the figures (:mod:`agentd.sim.figures`) as JSON and the tables as HTML, so it opens
in any browser with no server and no network. Should a plot fail to draw, the page says so
at its top instead of showing empty boxes.
"""

from __future__ import annotations

import json
from html import escape
from importlib import import_module
from pathlib import Path

from agentd.errors import UserError
from agentd.sim.report import Report
from agentd.sim.scenario import Scenario

EXTRA = ("plotly", "networkx", "numpy")  # what the report extra brings, for the page
FAILURES_SHOWN = 50


def check_report_extra() -> None:
    """Refuse ``--report`` before the run when the libraries it draws with are missing."""
    missing = []
    for name in EXTRA:
        try:
            import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--report needs the optional 'report' extra ({', '.join(missing)} "
                        "not installed): pip install 'agentd[report]' (make test and make demo"
                        " install it)")


def write_html(scenario: Scenario, report: Report, directory: Path) -> Path:
    """Write ``directory/index.html`` (creating the directory) and return its path."""
    from plotly.io import to_json
    from plotly.offline import get_plotlyjs

    from agentd.sim import figures

    plots = {"network": figures.network(scenario, report),
             "throughput": figures.throughput(report)}
    histograms = {f"latency-{n}": figure
                  for n, figure in enumerate(figures.latencies(report).values())}
    plots.update(histograms)
    debt = figures.debt(report)
    if debt is not None:
        plots["debt"] = debt
    # "<" escaped inside the JSON, so no name in it can close the <script> element
    data = "{" + ",".join(f"{json.dumps(key)}: {to_json(figure, validate=False)}"
                          for key, figure in plots.items()).replace("<", "\\u003c") + "}"
    page = _PAGE.format(
        title=escape(f"agentd sim — {scenario.name}"), summary=_summary(scenario, report),
        histograms="".join(f'<div class="plot" id="{key}"></div>' for key in histograms)
        or "<p>No calls were timed.</p>",
        debt='<div class="plot" id="debt"></div>' if debt is not None else
        "<p>No clearing in this run.</p>",
        invariants=_invariants(report), faults=_faults(report), counts=_counts(report),
        failures=_failures(report), plotly=get_plotlyjs(), figures=data)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _summary(scenario: Scenario, report: Report) -> str:
    ok = bool(report.checks) and all(report.checks.values())
    verdict = (f'<span class="badge {"ok" if ok else "bad"}">'
               f'{"every invariant holds" if ok else "an invariant FAILED"}</span>')
    wall = sum(report.counts.get(f"{phase}_ms", 0)
               for phase in ("start", "tallies", "traffic", "checks")) / 1000
    debt = sum(abs(balance) for _, _, balance in report.balances)
    facts = [f"{len(scenario.nodes)} nodes", f"{len(scenario.edges)} links",
             *(f"{report.counts[key]:,} {key.replace('_', ' ')}"
               for key in ("tallies", "payments", "invoices", "lifts", "relay_queries",
                           "evidence", "pings") if report.counts.get(key)),
             f"{len(report.faults)} faults", f"{wall:.1f} s",
             *([f"total debt {debt / 1000:,.3f} CHIP"] if report.balances else [])]
    return f"{verdict} " + " · ".join(escape(fact) for fact in facts)


def _table(head: tuple[str, ...], rows: list[tuple]) -> str:
    return ("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                      for row in rows) + "</table>")


def _invariants(report: Report) -> str:
    if not report.checks:
        return "<p>No invariant was checked.</p>"
    return _table(("invariant", "verdict"), [
        (escape(name), '<span class="badge ok">ok</span>' if ok else
         '<span class="badge bad">FAILED</span>') for name, ok in report.checks.items()])


def _faults(report: Report) -> str:
    if not report.faults:
        return "<p>No faults were injected.</p>"
    return _table(("at (s into the traffic)", "fault", "lasting (s)", "what"), [
        (f"{f['at_s']:.2f}", escape(f["kind"]), f"{f['for_s']:g}", escape(f["what"]))
        for f in report.faults])


def _counts(report: Report) -> str:
    return _table(("count", "value"), [(escape(key), f"{value:,}")
                                       for key, value in report.counts.items()])


def _failures(report: Report) -> str:
    if not report.failures:
        return ""
    more = len(report.failures) - FAILURES_SHOWN
    return ("<section><h2>Failures</h2><ul>"
            + "".join(f"<li>{escape(f)}</li>" for f in report.failures[:FAILURES_SHOWN])
            + (f"<li>… and {more} more</li>" if more > 0 else "") + "</ul></section>")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0; background: #f4f5f7; color: #1d2330; }}
header {{ background: #1d2330; color: #fff; padding: 18px 28px; }}
header h1 {{ margin: 0 0 6px; font-size: 22px; font-weight: 600; }}
main {{ max-width: 1280px; margin: 0 auto; padding: 18px 24px 40px; }}
section {{ background: #fff; border-radius: 8px; padding: 14px 18px; margin: 0 0 18px;
  box-shadow: 0 1px 3px rgba(0,0,0,.08); }}
h2 {{ font-size: 16px; margin: 0 0 8px; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr));
  gap: 12px; }}
.cols {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr));
  gap: 18px; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: 4px 10px 4px 0; border-bottom: 1px solid #eceef2; }}
th {{ font-weight: 600; color: #5a6270; }}
.badge {{ display: inline-block; padding: 1px 9px; border-radius: 10px; font-weight: 600; }}
.ok {{ background: #d8f3e3; color: #17653a; }} .bad {{ background: #fde0e0; color: #a01616; }}
#errors {{ background: #fde0e0; color: #a01616; padding: 10px 28px; font-weight: 600; }}
p.note {{ color: #5a6270; margin: 4px 0 0; }}
</style></head>
<body>
<header><h1>{title}</h1><div>{summary}</div></header>
<div id="errors" hidden></div>
<main>
<section><h2>The network</h2><div class="plot" id="network"></div>
<p class="note">Each line is a link; a tally's colour and width grow with its balance, each
node's colour is its net position (blue: owed, red: owing); a red cross marks a node that
crashed during the run and was restarted. Hover for figures; drag to zoom, double-click to
reset.</p></section>
<section><h2>Throughput</h2><div class="plot" id="throughput"></div></section>
<section><h2>Latency</h2><div class="grid">{histograms}</div></section>
<section><h2>Debt</h2>{debt}</section>
<div class="cols">
<section><h2>Invariants</h2>{invariants}</section>
<section><h2>Faults</h2>{faults}</section>
<section><h2>Counts</h2>{counts}</section>
</div>
{failures}
</main>
<script>
function showError(message) {{
  const box = document.getElementById("errors");
  box.hidden = false;
  box.textContent = "Some plots of this report failed to draw: " + message;
}}
window.addEventListener("error", event => showError(event.message));
</script>
<script>{plotly}</script>
<script>
const figures = {figures};
Promise.all(Object.entries(figures).map(([id, figure]) => Plotly.newPlot(
    id, figure.data, figure.layout, {{displaylogo: false, responsive: true}})))
  .then(() => {{ document.body.dataset.plotted = Object.keys(figures).length; }})
  .catch(error => showError(String(error)));
</script>
</body></html>
"""
