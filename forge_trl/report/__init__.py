"""`forge-trl report`: one self-contained HTML page of a run, a pipeline or a sweep directory.

    gather (gather.py)     the directory's files -> a Report (runs, benches, sweep, demo table), leniently
    sections (sections.py) the Report -> each section's tables and inline SVG charts (charts.py)
    page (page.py)         the template, its style sheet and script, all inline: the file works offline

Sections whose files are absent are left out and listed at the top with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path

REPORT_FILE = "report.html"
KINDS = {
    "run": "one training run",
    "pipeline": "a pipeline of chained runs",
    "sweep": "a sweep (Hydra multirun)",
    "bench": "a bench",
}


def render_report(directory: str | Path) -> str:
    """The report page of `directory` as HTML text; a ConfigError when it holds nothing a report shows."""
    import jinja2

    from forge_trl.report import page, sections
    from forge_trl.report.gather import gather

    report = gather(directory)
    context = sections.build(report)
    present = context["sections"]
    nav = [("overview", "Overview")]
    for key, anchor, label in [
        ("sweep", "sweep", "Sweep"),
        ("lineage", "lineage", "Lineage"),
        ("bench", "bench", "Bench"),
        ("demo", "bench", "Bench"),
        ("rm", "rm-scores", "RM scores"),
        ("curves", "curves", "Curves"),
        ("routing", "routing", "Routing"),
        ("samples", "samples", "Samples"),
    ]:
        if present[key] and (anchor, label) not in nav:
            nav.append((anchor, label))
    finished = sum(r.info is not None for r in report.runs)
    parts = [f"{len(report.runs)} run(s), {finished} finished"] if report.runs else []
    if report.benches:
        rows = sum(len(b.rows) for b in report.benches)
        parts.append(f"{rows} benched checkpoint(s)")
    if report.samples:
        parts.append(f"{len(report.samples)} bench samples")
    parts += [f"{k.replace('_', ' ')} {v:.0f}" for k, v in report.timings.items()]
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(page.TABLE_MACRO + page.TEMPLATE)
    return template.render(
        name=report.root.name or report.root.resolve().name,
        root=str(report.root),
        kind_text=KINDS[report.kind],
        written=time.strftime("%Y-%m-%d %H:%M"),
        nav=nav,
        overview="; ".join(parts) + "." if parts else "",
        notes=report.notes,
        style=jinja2.utils.markupsafe.Markup(page.STYLE),
        script=jinja2.utils.markupsafe.Markup(page.SCRIPT),
        fmt=sections.fmt_metric,
        layers_shown=sections.ROUTING_LAYERS_SHOWN,
        cards_open=sections.CARDS_OPEN,
        **context,
    )


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the report page of `directory` to `out` (default `<directory>/report.html`), atomically."""
    from forge_trl.files import write_text_atomically
    from forge_trl.report.gather import FINAL_DIR

    html = render_report(directory)
    root = Path(directory)
    if root.name == FINAL_DIR and not out:
        root = root.parent
    target = Path(out) if out else root / REPORT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(target, html)
