#!/usr/bin/env python
"""Drift scenario benchmark: `python benchmarks/drift.py [--policy P] [--scenario S] [--json]`.

Same as `driftline benchmark drift`; see jobs/drift_benchmark.py for the scenario and the figures.
"""

import sys

from pipeline.cli import cli

if __name__ == "__main__":
    cli(["benchmark", "drift", *sys.argv[1:]], prog_name="benchmarks/drift.py")
