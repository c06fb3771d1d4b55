#!/usr/bin/env python
"""SKAB benchmark: `python benchmarks/skab.py [--data-dir DIR] [--limit N] [--json]`.

Same as `driftline benchmark skab`; see models/skab.py for the protocol.
"""

from pipeline.cli import cli

if __name__ == "__main__":
    import sys

    cli(["benchmark", "skab", *sys.argv[1:]], prog_name="benchmarks/skab.py")
