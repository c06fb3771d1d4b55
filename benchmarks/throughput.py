#!/usr/bin/env python
"""Scorer throughput on a real broker: `python benchmarks/throughput.py [--sensors N] [--rows N] [--json]`.

Same as `driftline benchmark throughput`; see pipeline/throughput_benchmark.py for what is measured.
"""

import sys

from pipeline.cli import cli

if __name__ == "__main__":
    cli(["benchmark", "throughput", *sys.argv[1:]], prog_name="benchmarks/throughput.py")
