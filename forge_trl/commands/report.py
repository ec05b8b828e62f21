"""`forge-trl report <dir>` (or `dir=<dir>`): one self-contained HTML page of a run, pipeline or sweep directory.

The page (forge_trl/report) shows the lineage of the stages, their loss and metric curves, the bench table, a
per-sample browser with filters, reward-model score histograms, routing heatmaps of routed injections and, for a
sweep, the objective per trial and against each swept parameter. It needs no network: style, script and charts
are inline. Sections whose files are absent are left out and listed at the top.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

from forge_trl.commands.args import KeyValueParser, positional
from forge_trl.errors import ConfigError


@dataclass
class ReportArgs:
    """Write one self-contained HTML page of a run, pipeline or sweep directory: lineage, curves, bench table,
    samples, RM score histograms, routing heatmaps, sweep plots."""

    # The directory: a run's output_dir, a pipeline's out, a sweep's hydra.sweep.dir, or a bench.out.
    path: Optional[str] = field(default=None, metadata=positional("dir"))
    # The same directory as a key (`dir=...`), instead of the argument.
    dir: Optional[str] = None
    # The HTML file to write. null: <dir>/report.html.
    out: Optional[str] = None

    def __post_init__(self):
        if self.path and self.dir and self.path != self.dir:
            raise ConfigError(f"two directories given ('{self.path}' and dir={self.dir}); give one")
        self.dir = self.dir or self.path
        if not self.dir:
            raise ConfigError(f"no directory given; usage: {PARSER.usage()}")


PARSER = KeyValueParser(ReportArgs, "report", example="forge-trl report outputs/pipelines out=pipelines.html")


def report(args: ReportArgs) -> None:
    from forge_trl.report import write_report

    assert args.dir is not None
    print(f"report: {write_report(args.dir, args.out)}")


def main(argv: list[str] | None = None) -> int:
    return PARSER.run(argv, report)


if __name__ == "__main__":
    sys.exit(main())
