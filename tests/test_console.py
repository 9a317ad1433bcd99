"""What the person reading a build's output sees: one line per failure with where and what to
do, no tracebacks unless asked, data never read as console markup, a summary at the end, and a
non-zero exit when there is nothing to build because nothing landed."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from starsmith.loaders.landed import write_manifest
from starsmith.scaffold import init_project
from tests.test_projects import out, starsmith


def test_a_build_ends_with_a_summary_line(tmp_path: Path) -> None:
    init_project(tmp_path / "shop")
    proc = starsmith("build", "--in-process", cwd=tmp_path / "shop")
    assert proc.returncode == 0, out(proc)
    # the three landed days are a catch-up: one step per model for the range
    assert "3 days built in 1 range(s)" in proc.stdout, out(proc)
    assert "success: 3 step(s) built (0 with warnings), 0 failed, 0 skipped" in proc.stdout, \
        out(proc)
    assert "rows written" in proc.stdout and "warehouse.duckdb" in proc.stdout


def test_a_failure_is_one_line_and_data_is_not_markup(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    init_project(root)
    folder = root / "landing" / "customers" / "date=2024-01-01"
    customers = pl.read_parquet(folder / "part-0.parquet")
    twice = pl.concat([customers, customers.head(1).with_columns(name=pl.lit("Someone Else"))])
    twice.write_parquet(folder / "part-0.parquet")
    write_manifest(folder, {"part-0.parquet": twice.height})
    proc = starsmith("build", "--in-process", cwd=root)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, out(proc)
    assert "[customer_id=1]" in text, out(proc)  # shown as written, not eaten as markup
    assert "Traceback" not in text
    assert "failed: 0 step(s) built" in proc.stdout or "failed:" in proc.stdout, out(proc)


def test_an_unexpected_error_is_one_line_unless_verbose(tmp_path: Path) -> None:
    init_project(tmp_path / "shop")
    proc = starsmith("plan", "--target", "nosuchtarget", cwd=tmp_path / "shop")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text, out(proc)
    assert "error:" in text


def test_an_empty_landing_zone_says_what_is_missing(tmp_path: Path) -> None:
    init_project(tmp_path / "shop", sample=False)
    proc = starsmith("build", "--in-process", cwd=tmp_path / "shop")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, out(proc)
    assert "nothing has landed for customers, sales" in text, out(proc)
    assert "date=YYYY-MM-DD" in text and "Traceback" not in text


def test_a_failed_build_posts_its_summary_to_the_webhook(tmp_path: Path) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    got: list[dict[str, object]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        root = tmp_path / "shop"
        init_project(root)
        config = root / "starsmith.toml"
        config.write_text(config.read_text().replace(
            'target = "dev"\n',
            f'target = "dev"\nnotify_webhook = "http://127.0.0.1:{server.server_port}/hook"\n', 1))
        folder = root / "landing" / "customers" / "date=2024-01-01"
        customers = pl.read_parquet(folder / "part-0.parquet")
        twice = pl.concat([customers, customers.head(1).with_columns(name=pl.lit("Other"))])
        twice.write_parquet(folder / "part-0.parquet")
        write_manifest(folder, {"part-0.parquet": twice.height})
        proc = starsmith("build", "--in-process", cwd=root)
        assert proc.returncode == 1, out(proc)
    finally:
        server.shutdown()
        server.server_close()
    assert len(got) == 1, got
    assert got[0]["status"] == "failed" and got[0]["project"] == "shop", got[0]
    assert "customer_id=1" in json.dumps(got[0])


def test_a_corrupt_file_through_temporal_fails_once_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    init_project(root)
    folder = root / "landing" / "sales" / "date=2024-01-02"
    (folder / "part-0.parquet").write_bytes(b"not parquet at all")
    (folder / "_manifest.json").unlink()
    (folder / "_SUCCESS").touch()  # a complete day whose file is broken
    proc = starsmith("build", cwd=root)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, out(proc)
    assert "Traceback" not in text, out(proc)
    assert "part-0.parquet cannot be read" in proc.stdout, out(proc)
    assert "'attempt': 2" not in text  # bad data is not retried
