"""Worker metrics in the Prometheus text format, on 127.0.0.1 unless asked otherwise.

Two endpoints, on two ports:

* Temporal's SDK metrics (``temporal_*``: polls, task latencies, RPCs) come from the SDK's own
  exporter: ``temporal_runtime(port)`` makes a ``Runtime`` to pass to ``Client.connect``.
* starsmith's per-model figures (``starsmith_*``) come from ``record_step`` after each model
  step, served by ``serve_metrics(port)``: a standard-library HTTP server in a daemon thread.

Both refuse a non-loopback address unless ``allow_public=True``: metrics name models and tables,
and a worker should not publish them to its whole network by accident.

The families (labels ``model`` and ``status``; ``status`` is the step's: success, warning, failed)::

    starsmith_steps_total                      steps finished
    starsmith_step_failures_total              steps whose status is not success/warning/skipped
    starsmith_step_rows_read_total             rows read from the step's inputs
    starsmith_step_rows_written_total          rows written to the model's table
    starsmith_step_rows_quarantined_total      rows held back in quarantine
    starsmith_step_duration_seconds            summary: _sum and _count of step durations
    starsmith_step_last_duration_seconds       gauge: the latest step's duration
    starsmith_step_last_finished_timestamp_seconds  gauge: when the latest step finished (unix)
"""

from __future__ import annotations

import ipaddress
import math
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from starsmith.errors import ConfigError
from starsmith.log import get_logger

log = get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOOPBACK = "127.0.0.1"
NOT_FAILURES = frozenset({"success", "warning", "skipped"})

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # counter | gauge | summary
    help: str


STEPS = Family("starsmith_steps_total", "counter", "Model steps finished, by model and status.")
FAILURES = Family("starsmith_step_failures_total", "counter",
                  "Model steps that failed, by model and status.")
ROWS_READ = Family("starsmith_step_rows_read_total", "counter",
                   "Rows read from a model's inputs, by model and status.")
ROWS_WRITTEN = Family("starsmith_step_rows_written_total", "counter",
                      "Rows written to a model's table, by model and status.")
ROWS_QUARANTINED = Family("starsmith_step_rows_quarantined_total", "counter",
                          "Rows held back in quarantine, by model and status.")
DURATION = Family("starsmith_step_duration_seconds", "summary",
                  "Duration of model steps in seconds, by model and status.")
LAST_DURATION = Family("starsmith_step_last_duration_seconds", "gauge",
                       "Duration of the latest step of a model in seconds, by model and status.")
LAST_FINISHED = Family("starsmith_step_last_finished_timestamp_seconds", "gauge",
                       "When the latest step of a model finished (unix time), by model and status.")
FAMILIES = (STEPS, FAILURES, ROWS_READ, ROWS_WRITTEN, ROWS_QUARANTINED, DURATION, LAST_DURATION,
            LAST_FINISHED)


class Metrics:
    """A thread-safe registry of the families above (activity threads record concurrently)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, Labels], float] = {}

    def record_step(self, model: str, status: str, rows_written: int, rows_quarantined: int,
                    rows_read: int, duration_s: float, *, finished: float | None = None) -> None:
        counts = {"rows_written": rows_written, "rows_quarantined": rows_quarantined,
                  "rows_read": rows_read, "duration_s": duration_s}
        for what, value in counts.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{what} must be a finite number >= 0, not {value!r}")
        labels: Labels = (("model", model), ("status", status))
        now = time.time() if finished is None else finished
        with self._lock:
            self._add(STEPS.name, labels, 1)
            if status not in NOT_FAILURES:
                self._add(FAILURES.name, labels, 1)
            self._add(ROWS_READ.name, labels, rows_read)
            self._add(ROWS_WRITTEN.name, labels, rows_written)
            self._add(ROWS_QUARANTINED.name, labels, rows_quarantined)
            self._add(f"{DURATION.name}_sum", labels, duration_s)
            self._add(f"{DURATION.name}_count", labels, 1)
            self._values[(LAST_DURATION.name, labels)] = float(duration_s)
            self._values[(LAST_FINISHED.name, labels)] = float(now)

    def _add(self, sample: str, labels: Labels, amount: float) -> None:
        key = (sample, labels)
        self._values[key] = self._values.get(key, 0.0) + float(amount)

    def value(self, sample: str, **labels: str) -> float | None:
        """One sample's value (tests, and callers that want a figure without scraping)."""
        with self._lock:
            return self._values.get((sample, tuple(labels.items())))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def render(self) -> str:
        """The registry in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            values = dict(self._values)
        lines: list[str] = []
        for fam in FAMILIES:
            samples = [fam.name] if fam.kind != "summary" else [f"{fam.name}_sum",
                                                                   f"{fam.name}_count"]
            lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
            lines.append(f"# TYPE {fam.name} {fam.kind}")
            label_sets = sorted({labels for (name, labels) in values if name in samples})
            for labels in label_sets:
                for sample in samples:
                    if (sample, labels) in values:
                        lines.append(f"{sample}{_labels(labels)} {_number(values[(sample, labels)])}")
        return "\n".join(lines) + "\n"


REGISTRY = Metrics()


def record_step(model: str, status: str, rows_written: int, rows_quarantined: int, rows_read: int,
                duration_s: float, *, registry: Metrics | None = None) -> None:
    """Count one finished model step (call it for failed steps too, with their status)."""
    (registry or REGISTRY).record_step(model, status, rows_written, rows_quarantined, rows_read,
                                       duration_s)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
    return f"{{{inner}}}" if inner else ""


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def check_bind_host(host: str, *, allow_public: bool = False) -> None:
    """Refuse any address but loopback unless ``allow_public``: "0.0.0.0", "::", "" (every
    interface) and a LAN address all publish the metrics beyond this machine."""
    if allow_public:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"refusing to serve metrics on {host or 'every interface'!r}",
                          where="the metrics address",
                          fix="Bind to 127.0.0.1 (the default) and scrape through a local agent, or "
                              "pass allow_public=True to publish them on the network")


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:
        self._reply(body=True)

    def do_HEAD(self) -> None:
        self._reply(body=False)

    def _reply(self, *, body: bool) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "try /metrics")
            return
        data = self.server.registry.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # library code never prints
        log.debug("metrics %s: " + format, self.client_address[0], *args)


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: Metrics) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        super().__init__(address, _Handler)


_SERVERS: dict[int, _MetricsServer] = {}
_SERVERS_LOCK = threading.Lock()


def serve_metrics(port: int, host: str = LOOPBACK, *, allow_public: bool = False,
                  registry: Metrics | None = None) -> int:
    """Serve ``/metrics`` from a daemon thread; returns the bound port (``port=0``: a free one).
    Use a port other than the Temporal runtime's; ``stop_metrics(port)`` stops it."""
    check_bind_host(host, allow_public=allow_public)
    server = _MetricsServer((host.strip("[]"), port), registry or REGISTRY)
    bound = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name=f"starsmith-metrics-{bound}",
                              daemon=True)
    thread.start()
    with _SERVERS_LOCK:
        _SERVERS[bound] = server
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound


def stop_metrics(port: int) -> None:
    """Stop a server ``serve_metrics`` started (no-op for an unknown port)."""
    with _SERVERS_LOCK:
        server = _SERVERS.pop(port, None)
    if server is not None:
        server.shutdown()
        server.server_close()


def temporal_runtime(port: int, host: str = LOOPBACK, *, allow_public: bool = False) -> Runtime:
    """A Temporal ``Runtime`` whose SDK metrics (``temporal_*``) are served in the Prometheus
    format at ``http://host:port/metrics``. Make one per process and pass it to every
    ``Client.connect(..., runtime=...)``; the exporter lives as long as the runtime."""
    check_bind_host(host, allow_public=allow_public)
    address = f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
