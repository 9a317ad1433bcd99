"""The BigQuery client, its errors sorted into retryable or not, and jobs with known ids and costs.

Credentials come from the client's default chain (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
application-default login, the metadata server); nothing here reads, logs or stores a secret.
Only when an ``endpoint`` is configured (a local emulator for tests) is an anonymous client used.

Jobs that change data get deterministic ids: a step that is retried (a worker died, a network
call timed out) finds its job already there and waits for it instead of loading twice. Every
finished job's bytes processed and billed and slot time are kept for the run log.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

from starsmith.errors import ConfigError, DataError, RetryableError, StarsmithError
from starsmith.log import get_logger

log = get_logger(__name__)

TRANSIENT_REASONS = {"backendError", "internalError", "rateLimitExceeded", "jobBackendError",
                     "jobRateLimitExceeded", "quotaExceeded"}
DATA_REASONS = {"invalid", "invalidQuery"}
# Two publishes that both delete from one table (the watermarks, say) conflict in BigQuery: one
# transaction is rolled back whole with this message, and running it again is safe. The local
# emulator reports the same conflict as a failed commit.
CONFLICT = re.compile(r"concurrent update|could not serialize access|aborted due to concurren"
                      r"|failed to commit", re.IGNORECASE)


@dataclass(frozen=True)
class BigQueryRef:
    """``bigquery://project/dataset?location=EU``; ``endpoint=`` points at an emulator."""

    project: str
    dataset: str
    location: str = ""
    endpoint: str = ""

    @classmethod
    def parse(cls, ref: str) -> BigQueryRef:
        url = urlparse(ref)
        dataset = url.path.strip("/")
        if url.scheme != "bigquery" or not url.netloc or not dataset or "/" in dataset:
            raise ConfigError(f"not a BigQuery reference: {ref!r}", where="the warehouse",
                              fix="Use bigquery://PROJECT/DATASET (or set STARSMITH_BQ_PROJECT "
                              "and STARSMITH_BQ_DATASET with --target bigquery)")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        return cls(url.netloc, dataset, query.get("location", ""), query.get("endpoint", ""))

    @property
    def staging(self) -> str:
        return f"{self.dataset}_staging"

    @property
    def meta(self) -> str:
        return f"{self.dataset}_starsmith"


def make_client(ref: BigQueryRef) -> Any:
    from google.cloud import bigquery

    if ref.endpoint:  # a local emulator: no Google credentials exist or are wanted
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(project=ref.project, credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                               location=ref.location or None,
                               client_options=ClientOptions(api_endpoint=ref.endpoint))
    return bigquery.Client(project=ref.project, location=ref.location or None)


def _reasons(err: BaseException) -> set[str]:
    return {e.get("reason", "") for e in getattr(err, "errors", None) or [] if isinstance(e, dict)}


def is_transient(err: BaseException) -> bool:
    """Rate limits, 5xx and dropped connections: worth another try; bad requests are not."""
    from google.api_core import exceptions as api

    if isinstance(err, (api.TooManyRequests, api.InternalServerError, api.BadGateway,
                        api.ServiceUnavailable, api.GatewayTimeout, ConnectionError,
                        TimeoutError)):
        return True
    if isinstance(err, api.GoogleAPICallError):
        return bool(_reasons(err) & TRANSIENT_REASONS) or bool(CONFLICT.search(str(err)))
    import requests

    return isinstance(err, (requests.ConnectionError, requests.Timeout))


def classify(err: BaseException, where: str) -> StarsmithError:
    """The project's error for a client error: retryable or not, saying what to do."""
    from google.api_core import exceptions as api

    message = re.sub(r"\s+", " ", str(err))[:1500]
    if is_transient(err):
        return RetryableError(f"BigQuery is unavailable or throttling: {message}", where=where,
                              fix="Temporary; the step is retried with backoff")
    if isinstance(err, (api.Forbidden, api.Unauthorized)):
        return ConfigError(f"BigQuery refused access: {message}", where=where,
                           fix="Grant the roles listed in the README (BigQuery section) to the "
                           "credentials of the default chain")
    if isinstance(err, api.NotFound):
        return ConfigError(f"not found in BigQuery: {message}", where=where,
                           fix="Check the project, dataset and location of the target")
    if _reasons(err) & DATA_REASONS or isinstance(err, api.BadRequest):
        return DataError(f"BigQuery rejected the request: {message}", where=where,
                         fix="Not retried: fix the model or the data, then build again")
    return StarsmithError(f"BigQuery error: {message}", where=where)


def retrying(fn: Callable[[], Any], where: str, attempts: int = 6, delay: float = 1.0) -> Any:
    """Call ``fn``; transient failures are retried with exponential backoff, others raised."""
    for attempt in range(attempts):
        try:
            return fn()
        except StarsmithError:
            raise
        except Exception as err:
            if not is_transient(err) or attempt == attempts - 1:
                raise classify(err, where) from err
            wait = min(delay * 2.0 ** attempt, 30.0)
            log.warning("BigQuery (%s) transient error, retry in %.1f s: %s", where, wait, err)
            time.sleep(wait)
    raise AssertionError("unreachable")


@dataclass
class JobStats:
    job_id: str
    kind: str
    bytes_processed: int
    bytes_billed: int
    slot_ms: int
    reused: bool = False


def job_id(*parts: str | bytes) -> str:
    """A BigQuery job id from its identity: same parts, same id (letters, digits, _ and -)."""
    digest = hashlib.sha256()
    for p in parts:
        digest.update(p if isinstance(p, bytes) else p.encode())
        digest.update(b"\0")
    head = re.sub(r"[^A-Za-z0-9_-]", "_", str(parts[0]))[:60]
    return f"starsmith_{head}_{digest.hexdigest()[:24]}"


@dataclass
class Jobs:
    """Runs jobs for one step; deterministic ids make a retried job wait for the first one."""

    client: Any
    location: str = ""
    stats: list[JobStats] = field(default_factory=list)

    def run(self, start: Callable[[str | None], Any], kind: str, where: str,
            ident: str | None = None) -> Any:
        """Start a job (with id ``ident`` if given) and wait for it; returns the finished job."""
        from google.api_core import exceptions as api

        def once(jid: str | None) -> Any:
            try:
                job = start(jid)
                reused = False
            except api.Conflict:  # this id ran before: the earlier job's outcome is ours
                job = self.client.get_job(jid, location=self.location or None)
                reused = True
            job.result()
            self._record(job, kind, reused)
            return job

        if ident is None:
            return retrying(lambda: once(None), where)
        suffix = 0
        for attempt in range(6):
            jid = ident if suffix == 0 else f"{ident}_r{suffix}"
            try:
                return once(jid)
            except Exception as err:
                failed = self._failed_job(jid)
                if not is_transient(failed or err):
                    raise classify(failed or err, where) from err
                if failed is not None:  # the job ran and failed: its id is spent
                    suffix += 1
                log.warning("BigQuery job %s: transient error, retrying: %s", jid, failed or err)
                time.sleep(min(2.0 ** attempt, 30.0))
        raise RetryableError(f"BigQuery job {ident} kept failing", where=where,
                             fix="Temporary; the step is retried with backoff")

    def _failed_job(self, jid: str) -> BaseException | None:
        """The error of job ``jid`` if it ended in one; None if it never started."""
        from google.api_core import exceptions as api

        try:
            job = self.client.get_job(jid, location=self.location or None)
        except api.NotFound:
            return None
        except Exception as err:  # cannot even look: treat as the transport failing
            return err
        return job.exception() if job.done() else None

    def _record(self, job: Any, kind: str, reused: bool) -> None:
        self.stats.append(JobStats(
            job.job_id, kind, int(getattr(job, "total_bytes_processed", 0) or 0),
            int(getattr(job, "total_bytes_billed", 0) or 0),
            int(getattr(job, "slot_millis", 0) or 0), reused))

    def totals(self) -> dict[str, int]:
        return {"bq_jobs": len(self.stats),
                "bq_bytes_processed": sum(s.bytes_processed for s in self.stats),
                "bq_bytes_billed": sum(s.bytes_billed for s in self.stats),
                "bq_slot_ms": sum(s.slot_ms for s in self.stats)}

    def rows(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.stats]
