"""The scorer's HTTP endpoints for operators: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the loop is alive (it iterated recently and has not failed), 503
otherwise: a Kubernetes liveness probe. ``/readyz`` answers 200 when the scorer is doing its job
(partitions assigned, the model watcher alive, a commit recent enough whenever there is work to
commit), 503 with the failing checks otherwise: a readiness probe. Both return JSON details.

The server binds to ``metrics.address`` (default ``127.0.0.1``: the endpoints carry no
authentication; set ``0.0.0.0`` only behind a network policy or a scraping sidecar).

>>> server = HealthServer(lambda: b"m 1\\n", lambda: {"ok": True}, lambda: {"ok": False, "why": "x"})
>>> server.start("127.0.0.1", 0)
>>> import urllib.request, urllib.error
>>> urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz").status
200
>>> try:
...     urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz")
... except urllib.error.HTTPError as error:
...     error.code
503
>>> server.stop()
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

Check = Callable[[], dict[str, Any]]


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one port, served from a daemon thread."""

    def __init__(self, exposition: Callable[[], bytes], liveness: Check, readiness: Check) -> None:
        self.exposition = exposition
        self.liveness = liveness
        self.readiness = readiness
        self._server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    def start(self, address: str, port: int) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, outer.exposition(), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    try:
                        status = (outer.liveness if path == "/healthz" else outer.readiness)()
                    except Exception as error:  # a probe must answer, whatever went wrong
                        status = {"ok": False, "error": f"{type(error).__name__}: {error}"}
                    body = json.dumps(status, default=str).encode()
                    self._reply(200 if status.get("ok") else 503, body, "application/json")
                else:
                    self._reply(404, b"try /metrics, /healthz or /readyz\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: keep quiet
                log.debug("http %s", format % args)

        self._server = ThreadingHTTPServer((address, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="driftline-http", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
