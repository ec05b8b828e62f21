"""The report page: one HTML template with its style sheet and script inline (no network, no external library).

Jinja2 (installed with TRL) escapes every value the template prints; chart markup from `charts` arrives as
`Markup`, with its own text escaped where it was drawn. The script only adds conveniences (chart read-outs, the
sample filters); without it the page shows everything.
"""

from __future__ import annotations

STYLE = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --panel: #f6f8fa; --accent: #4e79a7;
  --pass: #1a7f37; --fail: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); }
header { padding: 18px 28px 10px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .meta { color: var(--muted); }
nav { position: sticky; top: 0; z-index: 5; background: var(--bg); border-bottom: 1px solid var(--line);
  padding: 6px 28px; display: flex; gap: 16px; flex-wrap: wrap; }
nav a { color: var(--accent); text-decoration: none; font-weight: 600; }
main { padding: 8px 28px 40px; }
section { margin: 22px 0 30px; }
h2 { font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 18px 0 8px; }
.note { color: var(--muted); }
.absent { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; }
.absent ul { margin: 4px 0; padding-left: 18px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: flex-start; }
figure.chart { margin: 0; }
figure.chart figcaption { color: var(--muted); font-size: 12px; max-width: 340px; }
svg text { font: 11px system-ui, sans-serif; fill: var(--fg); }
svg text.title { font-weight: 600; font-size: 12px; }
svg text.tick { fill: var(--muted); font-size: 10px; }
svg text.axis { fill: var(--muted); }
svg rect.plot { fill: #fff; stroke: var(--line); }
svg line.grid { stroke: #eef1f4; }
svg polyline.line { fill: none; stroke-width: 1.8; }
svg path.best { fill: none; stroke: #59a14f; stroke-width: 1.5; stroke-dasharray: 4 3; }
svg circle.best-point { stroke: #e15759; stroke-width: 2.5; }
svg line.cursor { stroke: #999; stroke-dasharray: 2 2; }
svg.lineage g.node rect { fill: #eef4fb; stroke: var(--accent); stroke-width: 1.5; }
svg.lineage g.node.external rect { fill: var(--panel); stroke: #999; stroke-dasharray: 4 3; }
svg.lineage g.node.failed rect { fill: #fdecec; stroke: var(--fail); }
svg.lineage text.node-label { font-weight: 700; font-size: 12px; }
svg.lineage text.node-line { fill: var(--muted); font-size: 11px; }
svg.lineage path.edge { fill: none; stroke: #888; stroke-width: 1.5; }
svg.lineage path.edge.reward { stroke: #f28e2b; stroke-dasharray: 5 4; }
svg.lineage a:hover rect { stroke-width: 3; }
.legend { display: flex; flex-wrap: wrap; gap: 2px 10px; max-width: 340px; font-size: 12px; color: var(--muted); }
.legend .key i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
details { margin: 6px 0; }
summary { cursor: pointer; color: var(--accent); }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; margin: 12px 0; }
.card h3 { margin: 0; display: inline; }
details.card > summary { margin-bottom: 6px; }
.pill { display: inline-block; border-radius: 10px; padding: 0 7px; margin: 1px 2px; font-size: 12px;
  background: var(--panel); border: 1px solid var(--line); white-space: nowrap; }
.pill.pass { color: var(--pass); border-color: var(--pass); }
.pill.fail { color: var(--fail); border-color: var(--fail); }
.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin-bottom: 8px; }
.filters input[type=search] { width: 260px; }
#samples-table td.text { white-space: pre-wrap; word-break: break-word; max-width: 380px; font-family: ui-monospace,
  SFMono-Regular, Menlo, monospace; font-size: 12px; }
#samples-table .system { color: var(--muted); display: block; margin-bottom: 4px; }
.rationale { color: var(--muted); font-size: 12px; display: block; max-width: 260px; }
code { font-size: 12px; }
.tip { position: fixed; pointer-events: none; background: rgba(31,35,40,.92); color: #fff; padding: 4px 8px;
  border-radius: 4px; font-size: 12px; display: none; z-index: 10; white-space: nowrap; }
.tip i { display: inline-block; width: 8px; height: 8px; margin-right: 4px; border-radius: 2px; }
"""

SCRIPT = """
(function () {
  "use strict";
  var SVG_NS = "http://www.w3.org/2000/svg";
  var tip = document.createElement("div");
  tip.className = "tip";
  document.body.appendChild(tip);

  function showTip(ev, lines) {
    tip.textContent = "";
    lines.forEach(function (line, i) {
      var row = document.createElement("div");
      if (line.color) {
        var swatch = document.createElement("i");
        swatch.style.background = line.color;
        row.appendChild(swatch);
      }
      row.appendChild(document.createTextNode(line.text));
      if (i === 0) { row.style.fontWeight = "600"; }
      tip.appendChild(row);
    });
    tip.style.display = "block";
    tip.style.left = (ev.clientX + 14) + "px";
    tip.style.top = (ev.clientY + 12) + "px";
  }
  function hideTip() { tip.style.display = "none"; }

  function fmt(v) {
    if (v === 0) { return "0"; }
    var a = Math.abs(v);
    return (a >= 1e5 || a < 1e-3) ? v.toExponential(3) : String(Number(v.toPrecision(5)));
  }

  // Line charts: the values of every series at the step nearest the pointer.
  Array.prototype.forEach.call(document.querySelectorAll("svg.line-chart[data-points]"), function (svg) {
    var data;
    try { data = JSON.parse(svg.getAttribute("data-points")); } catch (e) { return; }
    var f = data.frame;
    var cursor = document.createElementNS(SVG_NS, "line");
    cursor.setAttribute("class", "cursor");
    cursor.setAttribute("y1", f[1]);
    cursor.setAttribute("y2", f[1] + f[3]);
    cursor.style.display = "none";
    svg.appendChild(cursor);
    svg.addEventListener("mousemove", function (ev) {
      var box = svg.getBoundingClientRect();
      var sx = (ev.clientX - box.left) * (svg.viewBox.baseVal.width / box.width);
      if (sx < f[0] || sx > f[0] + f[2]) { cursor.style.display = "none"; hideTip(); return; }
      var x = f[4] + (sx - f[0]) / f[2] * (f[5] - f[4]);
      var lines = [], at = null;
      data.series.forEach(function (s) {
        var best = -1, dist = Infinity;
        for (var i = 0; i < s.x.length; i++) {
          var d = Math.abs(s.x[i] - x);
          if (d < dist) { dist = d; best = i; }
        }
        if (best < 0) { return; }
        if (at === null) { at = s.x[best]; }
        var off = s.x[best] !== at ? " (" + data.x + " " + s.x[best] + ")" : "";
        lines.push({ text: s.name + ": " + fmt(s.y[best]) + off, color: s.color });
      });
      if (at === null) { return; }
      var cx = f[0] + (at - f[4]) / (f[5] - f[4]) * f[2];
      cursor.setAttribute("x1", cx);
      cursor.setAttribute("x2", cx);
      cursor.style.display = "";
      showTip(ev, [{ text: data.x + " " + at }].concat(lines));
    });
    svg.addEventListener("mouseleave", function () { cursor.style.display = "none"; hideTip(); });
  });

  // A link to a folded run card opens it.
  function openTarget() {
    var el = location.hash ? document.getElementById(decodeURIComponent(location.hash.slice(1))) : null;
    if (el && el.tagName === "DETAILS") { el.open = true; }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();

  // The sample browser: target, metric outcome and text filters.
  var table = document.getElementById("samples-table");
  if (table) {
    var rows = Array.prototype.slice.call(table.tBodies[0].rows).map(function (tr) {
      var outcomes = {};
      try { outcomes = JSON.parse(tr.getAttribute("data-outcomes") || "{}"); } catch (e) { outcomes = {}; }
      return { tr: tr, target: tr.getAttribute("data-target"), outcomes: outcomes,
               text: tr.textContent.toLowerCase() };
    });
    var target = document.getElementById("filter-target");
    var metric = document.getElementById("filter-metric");
    var outcome = document.getElementById("filter-outcome");
    var search = document.getElementById("filter-search");
    var count = document.getElementById("samples-count");
    var more = document.getElementById("samples-more");
    var PAGE = 50, limit = PAGE;
    var apply = function () {
      var t = target.value, m = metric ? metric.value : "", o = outcome ? outcome.value : "";
      var q = search.value.trim().toLowerCase();
      var matched = 0;
      rows.forEach(function (row) {
        var ok = (!t || row.target === t) && (!q || row.text.indexOf(q) >= 0);
        if (ok && o) {
          ok = m ? row.outcomes[m] === o
                 : Object.keys(row.outcomes).some(function (k) { return row.outcomes[k] === o; });
        }
        if (ok) { matched++; }
        row.tr.style.display = ok && matched <= limit ? "" : "none";
      });
      var shown = Math.min(matched, limit);
      count.textContent = "showing " + shown + " of " + rows.length +
        (matched > shown ? " (" + matched + " match)" : "");
      more.hidden = matched <= shown;
      more.textContent = "show " + Math.min(PAGE, matched - shown) + " more";
    };
    var refilter = function () { limit = PAGE; apply(); };
    [target, metric, outcome].forEach(function (el) { if (el) { el.addEventListener("change", refilter); } });
    search.addEventListener("input", refilter);
    more.addEventListener("click", function () { limit += PAGE; apply(); });
    apply();
  }
})();
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="forge-trl report">
<title>forge report: {{ name }}</title>
<style>{{ style }}</style>
</head>
<body>
<header>
  <h1>forge report: {{ name }}</h1>
  <div class="meta">{{ kind_text }} · <code>{{ root }}</code> · written {{ written }}</div>
</header>
<nav>
  {% for anchor, label in nav %}<a href="#{{ anchor }}">{{ label }}</a>{% endfor %}
</nav>
<main>
<section id="overview">
  <h2>Overview</h2>
  <p>{{ overview }}</p>
  {% if absent %}
  <div class="absent"><strong>Not in this report</strong>
    <ul>{% for line in absent %}<li>{{ line }}</li>{% endfor %}</ul></div>
  {% endif %}
  {% if notes %}
  <details><summary>{{ notes|length }} file note(s)</summary>
    <ul>{% for line in notes %}<li><code>{{ line }}</code></li>{% endfor %}</ul></details>
  {% endif %}
</section>

{% set s = sections %}
{% if s.sweep %}
<section id="sweep">
  <h2>Sweep</h2>
  <p>{{ s.sweep.counts[0] }} jobs, {{ s.sweep.counts[1] }} finished, {{ s.sweep.counts[2] }} failed. Objective:
    <strong>{{ s.sweep.objective }}</strong> ({{ s.sweep.direction }}d){% if s.sweep.best %}; best job
    <a href="#{{ s.sweep.best_anchor }}">{{ s.sweep.best }}</a>
    with {{ s.sweep.best_value }}{% endif %}.
    {% if s.sweep.note %}<span class="note">({{ s.sweep.note }})</span>{% endif %}</p>
  {% if s.sweep.optuna %}<p>Optuna best: <code>{{ s.sweep.optuna.get("best_params") }}</code> →
    {{ s.sweep.optuna.get("best_value") }}</p>{% endif %}
  <div class="grid">{% for plot in s.sweep.plots %}{{ plot }}{% endfor %}</div>
  {{ table(s.sweep.table, "sweep-table") }}
</section>
{% endif %}

{% if s.lineage %}
<section id="lineage">
  <h2>Lineage</h2>
  <p class="note">Each stage starts from the checkpoint on its left (<code>parent</code> in final/forge_run.json);
    a dashed orange arrow leads from a reward model to the RL stage trained against it.</p>
  <div style="overflow-x:auto">{{ s.lineage.graph }}</div>
  <table id="stages-table">
    <thead><tr><th>stage</th><th>task</th><th>injection</th><th>starts from</th><th>status</th><th>step</th>
      <th>last loss</th><th>train loss</th><th>eval loss</th><th>task metrics (last logged)</th><th>rows</th>
      <th>seconds</th></tr></thead>
    <tbody>
    {% for row in s.lineage.rows %}{% set m = row.run.summary_metrics %}
      <tr><td><a href="#{{ row.run.anchor }}">{{ row.run.name }}</a></td><td>{{ row.run.task }}</td>
        <td>{{ row.run.injection }}</td>
        <td>{% if row.parent_href %}<a href="#{{ row.parent_href }}">{{ row.parent }}</a>
          {%- else %}<code>{{ row.parent }}</code>{% endif %}</td>
        <td>{{ row.run.status }}{% if row.run.failed %}: {{ row.run.failed }}{% endif %}</td>
        <td class="num">{{ row.run.step if row.run.step is not none else "–" }}</td>
        <td class="num">{{ fmt("loss", row.run.final_loss) }}</td>
        <td class="num">{{ fmt("loss", m.get("train_loss")) }}</td>
        <td class="num">{{ fmt("loss", m.get("eval_loss")) }}</td>
        <td>{% for name, value in row.metrics %}<span class="pill">{{ name }} {{ value }}</span>{% endfor %}</td>
        <td class="num">{{ (row.run.info or {}).get("data", {}).get("train_rows", "–") }}</td>
        <td class="num">
          {{- fmt("seconds", row.run.seconds if row.run.seconds is not none else m.get("train_runtime")) -}}
        </td></tr>
    {% endfor %}
    </tbody>
  </table>
</section>
{% endif %}

{% if s.bench or s.demo %}
<section id="bench">
  <h2>Bench</h2>
  {% if s.bench %}
  {% for name, text in s.bench.sources %}<p class="note"><code>{{ name }}/bench.json</code>: {{ text }}</p>{% endfor %}
  {{ table(s.bench.table, "bench-table") }}
  {% if s.bench.examples %}
  <details><summary>first response of each checkpoint</summary><ul>
    {% for label, text in s.bench.examples[:bench_examples_limit] -%}
      <li><strong>{{ label }}</strong>: <code>{{ text }}</code></li>
    {%- endfor %}
  </ul></details>
  {% endif %}
  {% endif %}
  {% if s.demo %}
  <h3>Held-out evaluation of the demo stages (demo_summary.json)</h3>
  {{ table(s.demo, "demo-table") }}
  {% endif %}
</section>
{% endif %}

{% if s.rm %}
<section id="rm-scores">
  <h2>Reward-model scores</h2>
  <div class="grid">{% for chart in s.rm %}{{ chart }}{% endfor %}</div>
</section>
{% endif %}


{% if s.curves %}
<section id="curves">
  <h2>Curves</h2>
  {% for c in s.curves %}
  <details class="card" id="{{ c.run.anchor }}"{% if loop.index0 < cards_open %} open{% endif %}>
    <summary><h3>{{ c.run.name }} <span class="note">· {{ c.run.task }} · {{ c.run.injection }}
      {%- if c.run.step is not none %} · step {{ c.run.step }}{% endif %}</span></h3></summary>
    {% if c.summary %}<div>{% for name, value in c.summary -%}
      <span class="pill">{{ name }} {{ value }}</span>
    {%- endfor %}</div>{% endif %}
    <div class="grid">{% for chart in c.key %}{{ chart }}{% endfor %}</div>
    {% if c.more %}<details><summary>{{ c.more|length }} more metrics</summary>
      <div class="grid">{% for chart in c.more %}{{ chart }}{% endfor %}</div></details>{% endif %}
  </details>
  {% endfor %}
</section>
{% endif %}

{% if s.routing %}
<section id="routing">
  <h2>Routing</h2>
  <p class="note">Share of tokens each expert received (routing.jsonl), per layer; the red mark is the uniform
    share.</p>
  {% for r in s.routing %}
  <details class="card"{% if loop.index0 < cards_open %} open{% endif %}>
    <summary><h3>{{ r.run.name }} <span class="note">· {{ r.experts }} experts · {{ r.steps }} logged steps</span>
    </h3></summary>
    {{ r.scale }}
    <div class="grid">{{ r.summary }}{{ r.imbalance }}
      {%- for chart in r.layers[:layers_shown] %}{{ chart }}{% endfor %}</div>
    {% if r.layers|length > layers_shown %}<details><summary>{{ r.layers|length - layers_shown }} more layers</summary>
      <div class="grid">{% for chart in r.layers[layers_shown:] %}{{ chart }}{% endfor %}</div></details>{% endif %}
  </details>
  {% endfor %}
</section>
{% endif %}
{% if s.samples %}
<section id="samples">
  <h2>Samples</h2>
  <div class="filters">
    <label>target <select id="filter-target"><option value="">all</option>
      {% for t in s.samples.targets %}<option value="{{ t }}">{{ t }}</option>{% endfor %}</select></label>
    {% if s.samples.filters %}
    <label>metric or judge <select id="filter-metric"><option value="">any</option>
      {% for m in s.samples.filters %}<option value="{{ m }}">{{ m }}</option>{% endfor %}</select></label>
    <label>outcome <select id="filter-outcome"><option value="">any</option>
      {% for o in s.samples.outcomes %}<option value="{{ o }}">{{ o }}</option>{% endfor %}</select></label>
    {% endif %}
    <label>search <input id="filter-search" type="search" placeholder="text in prompt, response, ..."></label>
    <span id="samples-count" class="note">{{ s.samples.rows|length }} samples</span>
  </div>
  <table id="samples-table">
    <thead><tr><th>target</th><th>prompt</th><th>response</th><th>reference</th><th>metrics</th>
      {%- if s.samples.judged %}<th>judges</th>{% endif %}</tr></thead>
    <tbody>
    {% for row in s.samples.rows %}
      <tr data-target="{{ row.target }}" data-outcomes="{{ row.outcomes|tojson|forceescape }}">
        <td>{{ row.target }}{% if row.where %}<span class="system">{{ row.where }}</span>{% endif %}</td>
        <td class="text">{% if row.system %}<span class="system">system: {{ row.system }}</span>{% endif -%}
          {{ row.prompt }}</td>
        <td class="text">{% if row.error %}<span class="pill fail">error: {{ row.error }}</span>{% endif -%}
          {{ row.response }}</td>
        <td class="text">{{ row.reference }}</td>
        <td>{% for name, value, state in row.metrics -%}
          <span class="pill {{ state }}">{{ name }} {{ value }}</span>
        {%- endfor %}</td>
        {% if s.samples.judged %}<td>{% for name, value, why in row.judges -%}
          <span class="pill">{{ name }} {{ value }}</span>
          {%- if why %}<span class="rationale">{{ why }}</span>{% endif %}
        {%- endfor %}</td>{% endif %}
      </tr>
    {% endfor %}
    </tbody>
  </table>
  <button id="samples-more" type="button" hidden>show more</button>
</section>
{% endif %}
</main>
<script>{{ script }}</script>
</body>
</html>
"""

# A table: `table(t, id)` in the template. A first-column link when the table has them.
TABLE_MACRO = """{% macro table(t, id) -%}
<table id="{{ id }}"><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{% for row in t.rows %}{% set i = loop.index0 %}<tr>
  {%- for cell in row %}
    {%- if loop.first and t.first and t.first[i] %}<td><a href="#{{ t.first[i] }}">{{ cell }}</a></td>
    {%- elif cell[:1] in "0123456789-+–" and cell[-1:] in "0123456789%–" %}<td class="num">{{ cell }}</td>
    {%- else %}<td>{{ cell }}</td>{% endif %}
  {%- endfor %}</tr>
{% endfor %}</tbody></table>
{%- endmacro %}"""
