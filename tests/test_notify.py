"""Build notifications against real receivers on 127.0.0.1: an HTTP webhook and an SMTP server."""

from __future__ import annotations

import base64
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from starsmith.errors import ConfigError
from starsmith.notify import (
    PASSWORD_ENV,
    USER_ENV,
    BuildSummary,
    Failure,
    NotifySettings,
    notify,
    safe_url,
    should_notify,
)
from starsmith.orchestration.messages import BuildReport, DayOutcome, StepResult

TOKEN = "s3cr3t-hook-token"
PASSWORD = "hunter2-smtp-password"
STARTED = datetime(2024, 1, 2, 2, 0, 0)
FINISHED = datetime(2024, 1, 2, 2, 14, 30)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours proxy variables: the receivers are on loopback, reach them directly."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(USER_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


# --- an HTTP receiver ------------------------------------------------------------------------


@dataclass
class Hook:
    port: int
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)  # status codes to answer with, in turn

    def url(self, path: str = "/hooks/build") -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={TOKEN}"


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.requests.append((self.path, dict(self.headers), body))
            code = state.replies.pop(0) if state.replies else 200
            self.send_response(code)
            if 300 <= code < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def dead_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- an SMTP receiver ------------------------------------------------------------------------


@dataclass
class Mailbox:
    port: int
    mails: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)  # decoded AUTH PLAIN credentials


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    """A minimal SMTP server (EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT), no TLS."""
    box = Mailbox(0)

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self) -> None:
            self.reply("220 127.0.0.1 test SMTP")
            sender, rcpts = "", []
            while raw := self.rfile.readline():
                line = raw.decode().rstrip("\r\n")
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    self.reply("250-127.0.0.1")
                    self.reply("250-AUTH PLAIN")
                    self.reply("250 8BITMIME")
                elif verb == "HELO" or verb in ("RSET", "NOOP"):
                    self.reply("250 OK")
                elif verb == "AUTH":
                    box.auth.append(base64.b64decode(line.split()[2]).decode())
                    self.reply("235 2.7.0 accepted")
                elif verb == "MAIL":
                    sender = line.split(":", 1)[1].strip().split()[0].strip("<>")
                    self.reply("250 OK")
                elif verb == "RCPT":
                    rcpts.append(line.split(":", 1)[1].strip().strip("<>"))
                    self.reply("250 OK")
                elif verb == "DATA":
                    self.reply("354 end with <CRLF>.<CRLF>")
                    data = b""
                    while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                        data += chunk[1:] if chunk.startswith(b"..") else chunk
                    box.mails.append((sender, rcpts, data))
                    sender, rcpts = "", []
                    self.reply("250 queued")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("502 not implemented")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield box
    finally:
        server.shutdown()
        server.server_close()


# --- summaries -------------------------------------------------------------------------------


def report(*, fail: bool = False, quarantine: int = 0) -> BuildReport:
    day = DayOutcome("2024-01-01", built=[
        StepResult("dim_customer", "2024-01-01", "success", rows_read=120, rows_written=100),
        StepResult("fct_sales", "2024-01-01", "success", rows_read=600, rows_written=500,
                   rows_quarantined=quarantine),
    ])
    if fail:
        day.failed["fct_returns"] = ("grain violated: 3 rows share (order_id, line)\n"
                                     "  see postgres://etl:pw@db.internal/wh for details")
        day.skipped["agg_daily"] = "fct_returns"
    return BuildReport(days=[day], not_started=["2024-01-02"] if fail else [])


def summary(**kw: Any) -> BuildSummary:
    return BuildSummary.from_report(report(**kw), project="shop", warehouse="/data/wh.duckdb",
                                    started=STARTED, finished=FINISHED,
                                    report_path="https://reports.example/shop/2024-01-01")


def settings(**kw: Any) -> NotifySettings:
    return NotifySettings(backoff_s=0.01, timeout_s=5.0, **kw)


def test_a_summary_counts_steps_rows_and_failures() -> None:
    s = summary(fail=True, quarantine=7)
    assert (s.status, s.built, s.warned, s.failed, s.skipped) == ("failed", 2, 1, 1, 1)
    assert (s.rows_written, s.rows_quarantined, s.duration_s) == (600, 7, 870.0)
    assert s.days_not_started == ("2024-01-02",)
    (f,) = s.failures
    assert (f.day, f.model) == ("2024-01-01", "fct_returns")
    assert "\n" not in f.message and "etl:pw" not in f.message and "postgres://***@db" in f.message
    assert summary(quarantine=3).status == "warning"
    assert summary().status == "success"
    warned = BuildSummary.from_report(report(), project="p", warehouse="w", started=STARTED,
                                      finished=FINISHED, warned=[("2024-01-01", "dim_customer")])
    assert (warned.status, warned.warned) == ("warning", 1)
    with pytest.raises(ValueError):
        BuildSummary("p", "w", STARTED, FINISHED, 1.0, "exploded")


def test_json_and_text_forms() -> None:
    s = summary(fail=True, quarantine=7)
    body = json.loads(s.to_json())
    assert body["schema"] == "starsmith.build_summary/1"
    assert body["project"] == "shop" and body["status"] == "failed"
    assert body["warehouse"] == "/data/wh.duckdb"
    assert body["started"] == "2024-01-02T02:00:00" and body["duration_s"] == 870.0
    assert body["steps"] == {"built": 2, "warned": 1, "failed": 1, "skipped": 1}
    assert body["rows"] == {"written": 600, "quarantined": 7}
    assert body["failures"][0]["model"] == "fct_returns"
    assert body["failures"][0]["message"].startswith("grain violated: 3 rows share")
    assert body["report"] == "https://reports.example/shop/2024-01-01"
    assert body["text"] == s.to_text()
    text = s.to_text()
    assert text.startswith("starsmith build FAILED: shop\n")
    assert "steps: 2 built (1 warned), 1 failed, 1 skipped" in text
    assert "rows: 600 written, 7 quarantined" in text
    assert "  2024-01-01 fct_returns: grain violated" in text
    assert "not started: 2024-01-02" in text
    assert "report: https://reports.example/shop/2024-01-01" in text


def test_many_failures_are_capped_in_the_text() -> None:
    many = tuple(Failure("2024-01-01", f"m{i}", "boom") for i in range(30))
    s = BuildSummary("p", "w", STARTED, FINISHED, 1.0, "failed", failed=30, failures=many)
    text = s.to_text()
    assert "m19: boom" in text and "m20: boom" not in text and "... and 10 more" in text


# --- when to notify --------------------------------------------------------------------------


@pytest.mark.parametrize(("on", "status", "expected"), [
    ("failure", "failed", True), ("failure", "warning", False), ("failure", "success", False),
    ("warning", "failed", True), ("warning", "warning", True), ("warning", "success", False),
    ("always", "success", True),
])
def test_notify_on_rule(on: str, status: str, expected: bool) -> None:
    assert should_notify(status, on) is expected


def test_no_notification_on_success_when_notify_on_is_warning(hook: Hook, smtp: Mailbox) -> None:
    cfg = settings(webhook=hook.url(), smtp_host="127.0.0.1", smtp_port=smtp.port,
                   email_to=("team@example.com",))
    assert cfg.on == "warning"  # the default
    assert notify(summary(), cfg) == []
    assert hook.requests == [] and smtp.mails == []
    assert notify(summary(quarantine=2), cfg) == []  # a warning does go out
    assert len(hook.requests) == 1 and len(smtp.mails) == 1


def test_notify_on_failure_ignores_warnings_and_always_sends_successes(hook: Hook) -> None:
    assert notify(summary(quarantine=2), settings(webhook=hook.url(), on="failure")) == []
    assert hook.requests == []
    assert notify(summary(), settings(webhook=hook.url(), on="always")) == []
    assert json.loads(hook.requests[0][2])["status"] == "success"


# --- the webhook -----------------------------------------------------------------------------


def test_the_webhook_receives_the_summary_as_json(hook: Hook) -> None:
    assert notify(summary(fail=True), settings(webhook=hook.url())) == []
    ((path, headers, body),) = hook.requests
    assert path == f"/hooks/build?token={TOKEN}"
    assert headers["Content-Type"].startswith("application/json")
    payload = json.loads(body)
    assert payload["status"] == "failed" and payload["project"] == "shop"
    assert payload["steps"]["failed"] == 1
    assert TOKEN not in body.decode()


def test_the_webhook_is_retried_after_a_server_error(hook: Hook) -> None:
    hook.replies = [503, 500]
    assert notify(summary(fail=True), settings(webhook=hook.url())) == []
    assert len(hook.requests) == 3


def test_a_client_error_is_not_retried_and_does_not_raise(hook: Hook,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    hook.replies = [404]
    with caplog.at_level(logging.DEBUG, logger="starsmith"):
        failed = notify(summary(fail=True), settings(webhook=hook.url()))
    assert len(hook.requests) == 1
    assert len(failed) == 1 and failed[0].startswith("webhook: ") and "404" in failed[0]
    assert f"http://127.0.0.1:{hook.port}/hooks/build" in caplog.text
    assert TOKEN not in caplog.text and TOKEN not in failed[0]


def test_a_dead_webhook_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{dead_port()}/hook?token={TOKEN}"
    with caplog.at_level(logging.DEBUG, logger="starsmith"):
        failed = notify(summary(fail=True), settings(webhook=url, retries=1))
    assert len(failed) == 1 and failed[0].startswith("webhook: ")
    assert "after 2 attempts" in failed[0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "/hook" in warnings[0].getMessage()
    assert TOKEN not in caplog.text and TOKEN not in failed[0]


def test_a_webhook_that_redirects_is_refused(hook: Hook) -> None:
    hook.replies = [302]
    failed = notify(summary(fail=True), settings(webhook=hook.url()))
    assert len(hook.requests) == 1 and "302" in failed[0]


# --- e-mail ----------------------------------------------------------------------------------


def test_the_email_carries_the_summary(smtp: Mailbox, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(USER_ENV, "starsmith-bot")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    cfg = NotifySettings.from_config({
        "notify_smtp_host": "127.0.0.1", "notify_smtp_port": smtp.port,
        "notify_email_to": "a@example.com, b@example.com", "notify_email_from": "ci@example.com",
    })
    with caplog.at_level(logging.DEBUG, logger="starsmith"):
        assert notify(summary(fail=True), cfg) == []
    ((sender, rcpts, data),) = smtp.mails
    assert sender == "ci@example.com" and rcpts == ["a@example.com", "b@example.com"]
    assert smtp.auth == [f"\0starsmith-bot\0{PASSWORD}"]
    mail = message_from_bytes(data, policy=policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail["Subject"] == "[starsmith] shop: build failed (1 failed, 1 skipped, 0 warned)"
    body = mail.get_body(("plain",))
    assert body is not None and "fct_returns: grain violated" in body.get_content()
    (attachment,) = mail.iter_attachments()
    assert json.loads(attachment.get_content())["steps"]["failed"] == 1
    assert PASSWORD not in data.decode() and PASSWORD not in caplog.text


def test_a_dead_smtp_server_does_not_raise(caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    cfg = settings(smtp_host="127.0.0.1", smtp_port=dead_port(), email_to=("a@example.com",))
    with caplog.at_level(logging.DEBUG, logger="starsmith"):
        failed = notify(summary(fail=True), cfg)
    assert len(failed) == 1 and failed[0].startswith("email: ")
    assert PASSWORD not in caplog.text


def test_only_loopback_relays_may_get_credentials_without_tls() -> None:
    from starsmith.notify import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("smtp.example.com") and not _is_loopback("10.0.0.5")


def test_one_failing_channel_does_not_stop_the_other(hook: Hook) -> None:
    cfg = settings(webhook=hook.url(), smtp_host="127.0.0.1", smtp_port=dead_port(),
                   email_to=("a@example.com",))
    failed = notify(summary(fail=True), cfg)
    assert [f.split(":", 1)[0] for f in failed] == ["email"]
    assert len(hook.requests) == 1


# --- settings --------------------------------------------------------------------------------


def test_settings_from_config_and_their_checks() -> None:
    cfg = NotifySettings.from_config({"notify_webhook": f"https://h.example/x?token={TOKEN}",
                                      "notify_on": "always", "name": "shop",
                                      "notify_email_to": ["a@x.org"], "notify_smtp_host": "mx"})
    assert (cfg.on, cfg.email_to, cfg.smtp_port) == ("always", ("a@x.org",), 25)
    assert TOKEN not in repr(cfg) and "https://h.example/x" in repr(cfg)
    assert NotifySettings.from_config({}) == NotifySettings() and not NotifySettings().configured
    with pytest.raises(ConfigError, match="notify_on"):
        NotifySettings.from_config({"notify_on": "sometimes"})
    with pytest.raises(ConfigError, match="not an http"):
        NotifySettings.from_config({"notify_webhook": "file:///etc/passwd"})
    with pytest.raises(ConfigError, match="no recipient"):
        NotifySettings.from_config({"notify_smtp_host": "mx"})
    with pytest.raises(ConfigError, match="port"):
        NotifySettings.from_config({"notify_smtp_host": "mx", "notify_email_to": "a@x",
                                    "notify_smtp_port": "smtp"})


def test_safe_url_keeps_scheme_host_and_path_only() -> None:
    assert safe_url(f"https://user:pw@hooks.example:8443/a/b?token={TOKEN}#frag") == \
        "https://hooks.example:8443/a/b"
