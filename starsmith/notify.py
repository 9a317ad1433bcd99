"""Tell someone when a nightly build fails or warns: a JSON webhook and, optionally, an e-mail.

Settings come from the project's config file::

    notify_webhook = "https://hooks.example.com/starsmith?token=..."
    notify_on = "warning"            # failure | warning (failures and warnings) | always
    notify_smtp_host = "smtp.example.com"
    notify_smtp_port = 587           # 465: SMTP over TLS; otherwise STARTTLS when offered
    notify_email_to = ["data-team@example.com"]   # or "a@x, b@y"
    notify_email_from = "starsmith@example.com"

SMTP credentials are read from ``STARSMITH_SMTP_USER`` / ``STARSMITH_SMTP_PASSWORD`` when a mail is
sent, never from the config file, and are sent only over TLS (or to a loopback relay).

Delivery never raises: a build's outcome must not change because a notification could not go out.
``notify`` logs a warning and returns what failed. Nothing secret reaches a payload or a log line:
the webhook is logged as ``scheme://host/path`` (its query string or user info may hold a token),
and the credentials and the webhook's token are scrubbed from any error text before it is logged.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from http.client import HTTPException
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from starsmith.errors import ConfigError
from starsmith.log import get_logger

if TYPE_CHECKING:
    from starsmith.orchestration.messages import BuildReport

log = get_logger(__name__)

STATUSES = ("success", "warning", "failed")
NOTIFY_ON = ("failure", "warning", "always")
USER_ENV = "STARSMITH_SMTP_USER"
PASSWORD_ENV = "STARSMITH_SMTP_PASSWORD"
SCHEMA = "starsmith.build_summary/1"
MAX_FAILURES = 50  # listed in a summary; the counts stay exact
TEXT_FAILURES = 20  # listed in the text (e-mail) form
MESSAGE_CHARS = 300
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def one_line(message: str, limit: int = MESSAGE_CHARS) -> str:
    """A message on one line, at most ``limit`` characters, without credentials in URLs."""
    flat = _USERINFO.sub(r"\1***@", " ".join(str(message).split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Failure(NamedTuple):
    day: str
    model: str
    message: str


@dataclass(frozen=True)
class BuildSummary:
    """One build's outcome, as a notification carries it."""

    project: str
    warehouse: str
    started: datetime
    finished: datetime
    duration_s: float
    status: str  # success | warning | failed
    built: int = 0  # steps that published (the warned ones included)
    warned: int = 0  # built with a warning (rows quarantined, a warn rule broken)
    failed: int = 0
    skipped: int = 0  # not run because an input failed
    rows_written: int = 0
    rows_quarantined: int = 0
    failures: tuple[Failure, ...] = ()
    report: str = ""  # a path or URL of the build's report
    days_not_started: tuple[str, ...] = ()  # days left after a failed day

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")

    @classmethod
    def from_report(cls, report: BuildReport, *, project: str, warehouse: str, started: datetime,
                    finished: datetime, report_path: str = "",
                    warned: Iterable[tuple[str, str]] = ()) -> BuildSummary:
        """A summary of a ``BuildReport`` (orchestration/messages.py). A built step warns when it
        quarantined rows, or when its (day, model) is in ``warned`` (e.g. a broken warn rule)."""
        flagged = set(warned)
        built = warned_n = failed = skipped = written = quarantined = 0
        failures: list[Failure] = []
        for day in report.days:
            for r in day.built:
                built += 1
                written += int(r.rows_written)
                quarantined += int(r.rows_quarantined)
                if r.rows_quarantined or (day.logical_date, r.model) in flagged:
                    warned_n += 1
            failed += len(day.failed)
            skipped += len(day.skipped)
            failures += [Failure(day.logical_date, m, one_line(why)) for m, why in day.failed.items()]
        not_started = tuple(report.not_started)
        status = "failed" if failed or skipped or not_started else "warning" if warned_n else "success"
        return cls(project=project, warehouse=warehouse, started=started, finished=finished,
                   duration_s=round((finished - started).total_seconds(), 3), status=status,
                   built=built, warned=warned_n, failed=failed, skipped=skipped,
                   rows_written=written, rows_quarantined=quarantined,
                   failures=tuple(failures[:MAX_FAILURES]), report=report_path,
                   days_not_started=not_started)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "project": self.project,
            "warehouse": one_line(self.warehouse),
            "status": self.status,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "duration_s": self.duration_s,
            "steps": {"built": self.built, "warned": self.warned, "failed": self.failed,
                      "skipped": self.skipped},
            "rows": {"written": self.rows_written, "quarantined": self.rows_quarantined},
            "failures": [{"day": f.day, "model": f.model, "message": one_line(f.message)}
                         for f in self.failures],
            "days_not_started": list(self.days_not_started),
            "report": self.report,
        }

    def to_json(self) -> str:
        """The webhook's body: the fields above plus ``text`` (chat webhooks show that field)."""
        return json.dumps(self.as_dict() | {"text": self.to_text()}, ensure_ascii=False)

    def headline(self) -> str:
        word = {"success": "succeeded", "warning": "warned", "failed": "FAILED"}[self.status]
        return one_line(f"starsmith build {word}: {self.project}", 200)

    def to_text(self) -> str:
        lines = [
            self.headline(),
            f"warehouse: {one_line(self.warehouse)}",
            f"ran: {self.started:%Y-%m-%d %H:%M:%S} to {self.finished:%Y-%m-%d %H:%M:%S} "
            f"({self.duration_s:.0f} s)",
            f"steps: {self.built} built ({self.warned} warned), {self.failed} failed, "
            f"{self.skipped} skipped",
            f"rows: {self.rows_written:,} written, {self.rows_quarantined:,} quarantined",
        ]
        if self.days_not_started:
            lines.append(f"not started: {', '.join(self.days_not_started)} (an earlier day failed)")
        if self.failures:
            lines.append("failures:")
            lines += [f"  {f.day} {f.model}: {one_line(f.message)}"
                      for f in self.failures[:TEXT_FAILURES]]
            more = self.failed - min(len(self.failures), TEXT_FAILURES)
            if more > 0:
                lines.append(f"  ... and {more} more")
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines) + "\n"


def safe_url(url: str) -> str:
    """``scheme://host[:port]/path`` of a URL: no user info, query or fragment (tokens live there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _split_addresses(value: object) -> tuple[str, ...]:
    """One address, "a@x, b@y", or a list of addresses."""
    if not value:
        return ()
    items: Iterable[object] = value.split(",") if isinstance(value, str) else \
        value if isinstance(value, list | tuple) else [value]
    return tuple(s for s in (str(v).strip() for v in items) if s)


@dataclass(frozen=True)
class NotifySettings:
    """Where notifications go and when. ``webhook`` is kept out of ``repr`` (it may hold a token)."""

    webhook: str = field(default="", repr=False)
    smtp_host: str = ""
    smtp_port: int = 25
    email_to: tuple[str, ...] = ()
    email_from: str = ""
    on: str = "warning"
    timeout_s: float = 10.0
    retries: int = 2  # webhook retries after the first attempt, with backoff
    backoff_s: float = 1.0  # before retry n: backoff_s * 2**(n-1)

    def __post_init__(self) -> None:
        if self.on not in NOTIFY_ON:
            raise ConfigError(f"notify_on must be one of {', '.join(NOTIFY_ON)}, not {self.on!r}",
                              where="notify_on", fix='Use "failure", "warning" or "always"')
        if self.webhook and urlsplit(self.webhook).scheme not in ("http", "https"):
            raise ConfigError(f"the notification webhook {safe_url(self.webhook)!r} is not an "
                              "http(s) URL", where="notify_webhook",
                              fix="Give the https:// URL of the receiving service")
        if self.smtp_host and not self.email_to:
            raise ConfigError("an SMTP host is set but no recipient", where="notify_email_to",
                              fix="Set notify_email_to to one address or a list of addresses")

    def __repr__(self) -> str:
        hook = safe_url(self.webhook) if self.webhook else ""
        return (f"NotifySettings(webhook={hook!r}, smtp_host={self.smtp_host!r}, "
                f"smtp_port={self.smtp_port}, email_to={self.email_to!r}, "
                f"email_from={self.email_from!r}, on={self.on!r})")

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> NotifySettings:
        """From the ``notify_*`` keys of a project's config table (others are ignored)."""
        port = raw.get("notify_smtp_port", 25)
        if isinstance(port, bool) or not isinstance(port, int | str) or not str(port).isdigit():
            raise ConfigError(f"notify_smtp_port must be a port number, not {port!r}",
                              where="notify_smtp_port")
        return cls(webhook=str(raw.get("notify_webhook") or ""),
                   smtp_host=str(raw.get("notify_smtp_host") or ""),
                   smtp_port=int(port),
                   email_to=_split_addresses(raw.get("notify_email_to")),
                   email_from=str(raw.get("notify_email_from") or ""),
                   on=str(raw.get("notify_on") or "warning"))

    @property
    def configured(self) -> bool:
        return bool(self.webhook or self.smtp_host)


def should_notify(status: str, on: str) -> bool:
    """``failure``: failed builds; ``warning``: failed and warned; ``always``: every build."""
    if on == "always":
        return True
    if on == "warning":
        return status in ("failed", "warning")
    return status == "failed"


def notify(summary: BuildSummary, settings: NotifySettings) -> list[str]:
    """Send ``summary`` where ``settings`` say, if its status calls for it. Never raises: returns
    one line per channel that failed (``"webhook: ..."``, ``"email: ..."``), empty when every
    configured channel took it (or none was due)."""
    if not settings.configured or not should_notify(summary.status, settings.on):
        log.debug("no notification: build %s, notify_on=%s", summary.status, settings.on)
        return []
    secrets = _secrets(settings)
    failed: list[str] = []
    for channel, send in (("webhook", _post_webhook), ("email", _send_email)):
        if channel == "webhook" and not settings.webhook:
            continue
        if channel == "email" and not settings.smtp_host:
            continue
        try:
            send(summary, settings)
        except Exception as err:  # delivery must never fail the build
            why = _scrub(f"{type(err).__name__}: {err}", secrets)
            where = safe_url(settings.webhook) if channel == "webhook" else \
                f"{settings.smtp_host}:{settings.smtp_port}"
            log.warning("could not send the %s notification to %s: %s", channel, where, why)
            failed.append(f"{channel}: {why}")
        else:
            log.info("sent the %s notification (%s build)", channel, summary.status)
    return failed


def _secrets(settings: NotifySettings) -> list[str]:
    out = [os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")]
    if settings.webhook:
        parts = urlsplit(settings.webhook)
        out += [settings.webhook, parts.query, parts.fragment, parts.password or "",
                parts.username or ""]
    return sorted((s for s in out if len(s) >= 3), key=len, reverse=True)


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return one_line(text)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is misconfigured: fail rather than post elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post_webhook(summary: BuildSummary, settings: NotifySettings) -> None:
    body = summary.to_json().encode()
    request = urllib.request.Request(settings.webhook, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": "starsmith-notify"})
    opener = urllib.request.build_opener(_NoRedirect)
    attempts = 1 + max(settings.retries, 0)
    for attempt in range(1, attempts + 1):
        try:
            with opener.open(request, timeout=settings.timeout_s) as response:
                status = response.status
            if 200 <= status < 300:
                return
            raise RuntimeError(f"HTTP {status}")
        except urllib.error.HTTPError as err:
            err.close()
            if (err.code != 429 and err.code < 500) or attempt == attempts:
                raise RuntimeError(f"HTTP {err.code} {err.reason}") from None
        except (OSError, HTTPException) as err:  # refused, reset, timed out, bad response
            if attempt == attempts:
                reason = err.reason if isinstance(err, urllib.error.URLError) else err
                raise RuntimeError(f"{reason} (after {attempts} attempts)") from None
        log.debug("webhook attempt %d failed; retrying", attempt)
        time.sleep(settings.backoff_s * 2 ** (attempt - 1))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _email(summary: BuildSummary, settings: NotifySettings) -> EmailMessage:
    msg = EmailMessage()
    counts = f"{summary.failed} failed, {summary.skipped} skipped, {summary.warned} warned"
    msg["Subject"] = one_line(f"[starsmith] {summary.project}: build {summary.status} ({counts})",
                              200)
    msg["From"] = settings.email_from or f"starsmith@{socket.gethostname()}"
    msg["To"] = ", ".join(settings.email_to)
    msg.set_content(summary.to_text())
    msg.add_attachment(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False).encode(),
                       maintype="application", subtype="json", filename="build-summary.json")
    return msg


def _send_email(summary: BuildSummary, settings: NotifySettings) -> None:
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    msg = _email(summary, settings)
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if settings.smtp_port == 465:
        smtp = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_s,
                                context=context)
    else:
        smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout_s)
    with smtp:
        smtp.ehlo()
        secure = settings.smtp_port == 465
        if not secure and smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
            secure = True
        if user:
            if not secure and not _is_loopback(settings.smtp_host):
                raise RuntimeError("the SMTP server offers no TLS; refusing to send the "
                                   "credentials in clear text")
            smtp.login(user, password)
        smtp.send_message(msg)
