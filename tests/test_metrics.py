"""Worker metrics: starsmith's per-model families scraped over HTTP on 127.0.0.1, and the
Temporal SDK's own exporter from ``temporal_runtime``."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from temporalio.client import Client

from starsmith.errors import ConfigError
from starsmith.orchestration.metrics import (
    CONTENT_TYPE,
    Metrics,
    check_bind_host,
    record_step,
    serve_metrics,
    stop_metrics,
    temporal_runtime,
)
from starsmith.orchestration.server import LocalServer, free_port

Sample = tuple[str, tuple[tuple[str, str], ...]]
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str) -> tuple[dict[Sample, float], dict[str, str], dict[str, str]]:
    """Samples, HELP texts and TYPEs of a Prometheus text exposition; fails on a malformed line."""
    samples: dict[Sample, float] = {}
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            helps[name] = doc
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name not in types, f"two TYPE lines for {name}"
            types[name] = kind
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            assert m, f"malformed sample line: {line!r}"
            name, raw_labels, value = m.groups()
            labels: list[tuple[str, str]] = []
            if raw_labels:
                consumed = "".join(x.group(0) for x in _LABEL.finditer(raw_labels))
                assert consumed == raw_labels, f"malformed labels: {raw_labels!r}"
                labels = [(k, _unescape(v)) for k, v in _LABEL.findall(raw_labels)]
            family = re.sub(r"_(sum|count|bucket)$", "", name)
            assert name in types or family in types, f"{name} has no TYPE line before it"
            samples[(name, tuple(labels))] = float(value)
    return samples, helps, types


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read().decode(), response.headers["Content-Type"]


@pytest.fixture
def registry() -> Metrics:
    return Metrics()


@pytest.fixture
def served(registry: Metrics) -> Iterator[int]:
    port = serve_metrics(0, registry=registry)
    try:
        yield port
    finally:
        stop_metrics(port)


def ok(model: str, status: str = "success") -> tuple[tuple[str, str], ...]:
    return (("model", model), ("status", status))


def test_recorded_steps_are_scraped_over_http(registry: Metrics, served: int) -> None:
    record_step("dim_customer", "success", 100, 0, 120, 1.5, registry=registry)
    record_step("dim_customer", "success", 50, 2, 60, 0.5, registry=registry)
    record_step("fct_sales", "success", 500, 7, 600, 4.25, registry=registry)
    record_step("fct_sales", "failed", 0, 0, 0, 0.75, registry=registry)
    text, content_type = scrape(served)
    assert content_type == CONTENT_TYPE
    samples, helps, types = parse(text)

    assert samples[("starsmith_steps_total", ok("dim_customer"))] == 2
    assert samples[("starsmith_step_rows_written_total", ok("dim_customer"))] == 150
    assert samples[("starsmith_step_rows_read_total", ok("dim_customer"))] == 180
    assert samples[("starsmith_step_rows_quarantined_total", ok("dim_customer"))] == 2
    assert samples[("starsmith_step_duration_seconds_sum", ok("dim_customer"))] == 2.0
    assert samples[("starsmith_step_duration_seconds_count", ok("dim_customer"))] == 2
    assert samples[("starsmith_step_last_duration_seconds", ok("dim_customer"))] == 0.5
    assert samples[("starsmith_step_rows_written_total", ok("fct_sales"))] == 500
    assert samples[("starsmith_step_rows_quarantined_total", ok("fct_sales"))] == 7
    assert samples[("starsmith_steps_total", ok("fct_sales", "failed"))] == 1
    assert samples[("starsmith_step_failures_total", ok("fct_sales", "failed"))] == 1
    assert ("starsmith_step_failures_total", ok("fct_sales")) not in samples
    assert samples[("starsmith_step_last_finished_timestamp_seconds", ok("fct_sales"))] > 1.7e9

    assert types == {
        "starsmith_steps_total": "counter", "starsmith_step_failures_total": "counter",
        "starsmith_step_rows_read_total": "counter", "starsmith_step_rows_written_total": "counter",
        "starsmith_step_rows_quarantined_total": "counter",
        "starsmith_step_duration_seconds": "summary",
        "starsmith_step_last_duration_seconds": "gauge",
        "starsmith_step_last_finished_timestamp_seconds": "gauge",
    }
    assert set(helps) == set(types) and all(helps.values())
    lines = text.splitlines()  # every family: HELP, then TYPE, then its samples
    for name in types:
        h, t = lines.index(f"# HELP {name} {helps[name]}"), lines.index(f"# TYPE {name} {types[name]}")
        assert t == h + 1
        assert all(i > t for i, line in enumerate(lines) if line.startswith(f"{name}{{"))


def test_label_values_are_escaped(registry: Metrics, served: int) -> None:
    odd = 'sales "eu"\\daily\nv2'
    record_step(odd, "success", 3, 0, 3, 0.1, registry=registry)
    text, _ = scrape(served)
    assert 'model="sales \\"eu\\"\\\\daily\\nv2"' in text
    samples, _, _ = parse(text)
    assert samples[("starsmith_step_rows_written_total", ok(odd))] == 3


def test_an_empty_registry_still_renders_help_and_type(registry: Metrics, served: int) -> None:
    samples, helps, types = parse(scrape(served)[0])
    assert samples == {} and len(types) == 8 and set(helps) == set(types)


def test_only_metrics_paths_are_served(served: int) -> None:
    assert scrape(served, "/")[0].startswith("# HELP")
    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(served, "/admin")
    err.value.close()
    assert err.value.code == 404


def test_bad_figures_are_refused(registry: Metrics) -> None:
    with pytest.raises(ValueError, match="rows_written"):
        record_step("m", "success", -1, 0, 0, 0.1, registry=registry)
    with pytest.raises(ValueError, match="duration_s"):
        record_step("m", "success", 1, 0, 0, float("nan"), registry=registry)
    assert registry.render().count("\n") == 16  # nothing recorded: HELP and TYPE lines only


def test_the_default_registry_is_module_wide() -> None:
    from starsmith.orchestration.metrics import REGISTRY

    before = REGISTRY.value("starsmith_steps_total", model="t_default", status="success") or 0
    record_step("t_default", "success", 1, 0, 1, 0.01)
    assert REGISTRY.value("starsmith_steps_total", model="t_default", status="success") == before + 1


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "example.com"])
def test_the_server_refuses_public_addresses_unless_asked(host: str) -> None:
    with pytest.raises(ConfigError, match="refusing to serve metrics"):
        serve_metrics(0, host)
    with pytest.raises(ConfigError, match="refusing to serve metrics"):
        temporal_runtime(free_port(), host)
    check_bind_host(host, allow_public=True)  # explicitly asked: allowed (not bound here)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_addresses_are_allowed(host: str) -> None:
    check_bind_host(host)


@pytest.mark.temporal
def test_temporal_runtime_exposes_sdk_metrics(temporal_server: LocalServer) -> None:
    port = free_port()
    runtime = temporal_runtime(port)

    async def go() -> None:
        for _ in range(50):  # the dev server accepts TCP a moment before it serves RPCs
            try:
                client = await Client.connect(temporal_server.address, runtime=runtime)
                break
            except RuntimeError:
                await asyncio.sleep(0.2)
        else:
            pytest.fail("cannot connect to the dev server")
        await client.count_workflows()

    asyncio.run(go())
    text, _ = scrape(port)
    samples, _, types = parse(text)
    assert any(name.startswith("temporal_") for name in types)
    requests = {dict(labels).get("operation"): v for (name, labels), v in samples.items()
                if name == "temporal_request"}
    assert requests.get("CountWorkflowExecutions", 0) >= 1
