"""driftline's streaming side: consumer, windows, scoring loop, drift, sinks, config and CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("driftline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
