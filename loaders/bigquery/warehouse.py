"""The BigQuery target: Parquet loads into expiring staging tables, one transaction per publish.

A step stages its rows with a Parquet load job into ``<dataset>_staging`` (a table per model and
run, expiring by itself), the quality gate queries that table, and the publish runs a single
``BEGIN TRANSACTION ... COMMIT TRANSACTION`` script: the strategy's statements, the quarantine
rows, the run log, the quality results, the watermarks and the cost of the jobs before it. The
script's job id is derived from the build run, the model and what was staged, so a retried step
that finds its publish already done does not publish twice.

Tables are created from the model spec before the script (DDL cannot run in a transaction): an
additive change (a new nullable column) evolves the table in place, anything else stops here,
before any data moves, naming the table, the column and ``--full-refresh``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import polars as pl
from sqlglot import exp

from starsmith.contract import Model
from starsmith.errors import ConfigError
from starsmith.loaders.bigquery import dialect, meta
from starsmith.loaders.bigquery.connection import BigQueryRef, Jobs, job_id, make_client, retrying
from starsmith.loaders.bigquery.script import publish_script, values_insert
from starsmith.loaders.bigquery.tables import compare, current_view_sql, evolve, incompatible_error, table_for
from starsmith.loaders.target import RUN_LOG_COLUMNS, Publish, SqlReads, safe_name
from starsmith.log import get_logger

log = get_logger(__name__)

STAGING_TTL = timedelta(hours=int(os.environ.get("STARSMITH_BQ_STAGING_HOURS", "24")))
MERGE_MODE_ENV = "STARSMITH_BQ_MERGE_MODE"
_READY: set[str] = set()
_DROPS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="starsmith-bq-drop")
_READY_LOCK = threading.Lock()


def staged_name(ref: str) -> str:
    """The table name in a staged reference (``"project"."dataset"."table"``)."""
    return ref.split(".")[-1].strip('"')


def _q(*parts: str) -> str:
    return ".".join(f"`{p}`" for p in parts)


def _frame(table: Any) -> pl.DataFrame:
    """A result as Polars, without the client's Arrow extension tags (``google:sqlType:...``)."""
    import pyarrow as pa

    plain = pa.schema([pa.field(f.name, f.type, f.nullable) for f in table.schema])
    result = pl.from_arrow(pa.Table.from_arrays(table.columns, schema=plain))
    assert isinstance(result, pl.DataFrame)
    return result


class BigQueryWarehouse(SqlReads):
    """A BigQuery dataset as the warehouse target. Cheap to build; the client is made on use."""

    dialect = "bigquery"
    row_index = meta.ROW

    def __init__(self, ref: BigQueryRef, *, job_key: str = "", merge_mode: str = "") -> None:
        self.ref = ref
        self.job_key = job_key or uuid.uuid4().hex
        self.merge_mode = merge_mode or os.environ.get(MERGE_MODE_ENV, "merge")
        self._client: Any = None
        self._jobs: Jobs | None = None
        self._digests: dict[str, str] = {}
        self.nonce = uuid.uuid4().hex[:8]
        self.datasets = {"main": ref.dataset, "_starsmith": ref.meta}

    @classmethod
    def from_ref(cls, ref: str, *, job_key: str = "") -> BigQueryWarehouse:
        return cls(BigQueryRef.parse(ref), job_key=job_key)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.ref)
        return self._client

    @property
    def jobs(self) -> Jobs:
        if self._jobs is None:
            self._jobs = Jobs(self.client, self.ref.location)
        return self._jobs

    def table_id(self, table: str, dataset: str | None = None) -> str:
        return f"{self.ref.project}.{dataset or self.ref.dataset}.{table}"

    # -- setup -------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[None]:
        self.ensure_datasets()
        yield

    def ensure_datasets(self) -> None:
        """The star, staging and metadata datasets and tables; once per process and target."""
        from google.cloud import bigquery

        key = f"{self.ref.project}.{self.ref.dataset}"
        with _READY_LOCK:
            if key in _READY:
                return
            for name, ttl in ((self.ref.dataset, None), (self.ref.staging, STAGING_TTL),
                              (self.ref.meta, None)):
                ds = bigquery.Dataset(f"{self.ref.project}.{name}")
                ds.location = self.ref.location or None
                if ttl is not None:
                    ds.default_table_expiration_ms = int(ttl.total_seconds() * 1000)
                    ds.description = "starsmith staging: tables expire on their own"
                made = retrying(partial(self.client.create_dataset, ds, exists_ok=True), name)
                if ttl is not None and made.default_table_expiration_ms != \
                        ds.default_table_expiration_ms:  # made by someone else: expire anyway
                    made.default_table_expiration_ms = ds.default_table_expiration_ms
                    retrying(partial(self.client.update_dataset, made,
                                     ["default_table_expiration_ms"]), name)
            for table, schema in meta.meta_tables().items():
                t = bigquery.Table(self.table_id(table, self.ref.meta), schema=meta.fields(schema))
                retrying(partial(self.client.create_table, t, exists_ok=True), table)
            _READY.add(key)

    # -- reading -----------------------------------------------------------------------------
    def exists(self, table: str) -> bool:
        return self.get_table(self.table_id(table)) is not None

    def get_table(self, table_id: str) -> Any:
        from google.api_core import exceptions as api

        try:
            return retrying(lambda: self.client.get_table(table_id), table_id)
        except ConfigError as err:
            if isinstance(err.__cause__, api.NotFound):
                return None
            raise

    def query(self, query: str, params: Sequence[Any] | None = None, **frames: pl.DataFrame
              ) -> pl.DataFrame:
        """Run step SQL (DuckDB dialect) here; keyword frames are uploaded as staging tables."""
        uploaded: dict[str, str] = {}
        sources: dict[str, exp.Expr] = {}
        bound = [dialect.parameter(p, i) for i, p in enumerate(params or ())]
        for name, frame in frames.items():
            if frame.height * max(frame.width, 1) <= dialect.INLINE_VALUES:
                sources[name], param = dialect.inline_frame(f"_f_{safe_name(name)}", frame)
                bound += [param] if param is not None else []
            else:  # a big frame goes up as a table
                uploaded[name] = self.upload(f"_frame_{safe_name(name)}_{uuid.uuid4().hex[:12]}",
                                              frame)
                sources[name] = dialect.qualified(self.ref.project, self.ref.staging,
                                                  uploaded[name])
        try:
            text = dialect.to_bigquery(query, self.ref.project, self.datasets, sources)
            job = self._run(text, bound, "query")
            table = job.result().to_arrow(create_bqstorage_client=False)
        finally:
            for name in uploaded.values():
                self.drop_staged(name)
        return _frame(table)

    def _run(self, text: str, params: list[Any], kind: str, ident: str | None = None) -> Any:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=params)

        def start(jid: str | None) -> Any:
            if jid is None:
                return self.client.query(text, job_config=config, job_id_prefix="starsmith_",
                                         location=self.ref.location or None)
            return self.client.query(text, job_config=config, job_id=jid, job_retry=None,
                                     location=self.ref.location or None)

        return self.jobs.run(start, kind, where=f"{self.ref.project}.{self.ref.dataset}",
                             ident=ident)

    def dry_run(self, query: str) -> int:
        """Bytes a query would scan, by a BigQuery dry run (free; nothing runs)."""
        from google.cloud import bigquery

        text = dialect.to_bigquery(query, self.ref.project, self.datasets)
        config = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
        job = retrying(lambda: self.client.query(text, job_config=config,
                                                 location=self.ref.location or None), "dry run")
        return int(job.total_bytes_processed or 0)

    def read_staged(self, ref: str) -> pl.DataFrame:
        return self.query(f"SELECT * FROM {ref} ORDER BY {meta.ROW}").drop(meta.ROW)

    # -- staging -----------------------------------------------------------------------------
    def upload(self, name: str, frame: pl.DataFrame) -> str:
        """A Parquet load job into an expiring staging table (replacing any earlier copy)."""
        from google.cloud import bigquery

        frame = meta.portable(frame)
        data = meta.parquet(frame)
        table_id = self.table_id(name, self.ref.staging)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET, schema=meta.fields(frame.schema),
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE)

        def start(jid: str | None) -> Any:
            import io

            return self.client.load_table_from_file(
                io.BytesIO(data), table_id, job_config=config, job_id_prefix="starsmith_load_",
                location=self.ref.location or None)

        self.jobs.run(start, "load", where=table_id)
        self._digests[name] = hashlib.sha256(data).hexdigest()
        return name

    def stage(self, model: str, run_id: str, frame: pl.DataFrame, *, in_memory: bool = False
              ) -> str:
        """A load job into the staging dataset (``in_memory`` has no meaning here: the audit
        and the publish run in BigQuery, which must hold the rows)."""
        # A name of its own per attempt: a retry never loads into a table an earlier attempt
        # is still dropping; the publish job id is derived from the rows, not from this name.
        name = self.upload(f"{safe_name(model)}__{safe_name(run_id)}__{self.nonce}",
                            frame.with_row_index(meta.ROW).with_columns(pl.col(meta.ROW).cast(
                                pl.Int64())))
        return dialect.ref_text(self.ref.project, self.ref.staging, name)

    @staticmethod
    def keep_staged(ref: str) -> str:
        """A staged table stays until it expires: a steward reads refused rows there."""
        return ref

    def union(self, refs: Sequence[str]) -> str:
        """The batches of one step as one staged table, numbered in batch order."""
        first = staged_name(refs[0])
        name = f"{first}__all"
        parts = " UNION ALL ".join(f"SELECT *, {i} AS _part FROM {r}" for i, r in enumerate(refs))
        target = _q(self.ref.project, self.ref.staging, name)
        text = (f"CREATE OR REPLACE TABLE {target} AS SELECT * EXCEPT (_part, {meta.ROW}), "
                f"ROW_NUMBER() OVER (ORDER BY _part, {meta.ROW}) - 1 AS {meta.ROW} FROM "
                f"({dialect.to_bigquery(parts, self.ref.project, self.datasets)})")
        self._run(text, [], "stage")
        self._digests[name] = hashlib.sha256("".join(
            self._digests.get(staged_name(r), r) for r in refs).encode()).hexdigest()
        for ref in refs:
            self.drop_staged(staged_name(ref))
        return dialect.ref_text(self.ref.project, self.ref.staging, name)

    def drop_staged(self, name: str) -> None:
        """Drop a staging table in the background: nothing waits for it, and it expires anyway."""
        def drop() -> None:
            try:
                self.client.delete_table(self.table_id(name, self.ref.staging), not_found_ok=True)
            except Exception as err:
                log.warning("could not drop staging table %s (it will expire): %s", name, err)

        _DROPS.submit(drop)

    # -- publishing --------------------------------------------------------------------------
    def prepare(self, job: Publish) -> None:
        """Create or evolve the target table from its spec; refuse what cannot evolve."""
        model = job.model
        if model is None:
            raise ConfigError(f"the BigQuery target needs the model spec to publish {job.target}")
        table_id = self.table_id(model.name)
        table = self.get_table(table_id)
        if table is not None:
            change = compare(model, table)
            if change.incompatible and not job.full_refresh:
                raise incompatible_error(model, table_id, change)
            if change.incompatible:  # a full refresh rebuilds the table from its spec
                log.warning("%s: recreating for a full refresh: %s", table_id,
                            "; ".join(change.incompatible))
                retrying(lambda: self.client.delete_table(table_id), table_id)
                table = None
            else:
                retrying(lambda: evolve(self.client, model, table, change,
                                        job.run_log["run_id"]), table_id)
        if table is None:
            spec = table_for(model, self.ref.project, self.ref.dataset, job.run_log["run_id"])
            retrying(lambda: self.client.create_table(spec, exists_ok=True), table_id)
            view = current_view_sql(model, self.ref.project, self.ref.dataset)
            if view:
                self._run(view, [], "ddl")

    def check_schema(self, model: Model, *, full_refresh: bool) -> None:
        table_id = self.table_id(model.name)
        table = self.get_table(table_id)
        if table is not None and not full_refresh:
            change = compare(model, table)
            if change.incompatible:
                raise incompatible_error(model, table_id, change)

    def publish(self, job: Publish) -> None:
        self.prepare(job)
        assert job.model is not None
        statements = dialect.publish_statements(job.statements, job.model.schema.names(),
                                                self.merge_mode)
        body = [dialect.to_bigquery(s, self.ref.project, self.datasets) for s in statements]
        script, staged_meta = publish_script(self, job, body)
        names = [staged_name(r) for r in (job.staged, *job.also_staged)]
        # The publish's identity: this build run, this model and date, these statements over
        # these staged rows. A retry of the step finds the job done and does not publish twice.
        identity = "\n".join(body)
        for n in names:  # staged tables by their content, not their per-attempt names
            identity = identity.replace(n, self._digests.get(n, n))
        ident = job_id(f"publish_{job.target}", self.job_key, job.run_log["run_id"],
                       str(job.run_log["logical_date"]), identity)
        self._run(script, [], "publish", ident=ident)
        self._record_jobs(job.run_log, self.jobs.stats[-1:])
        for name in (*names, *staged_meta):
            self.drop_staged(name)

    def _record_jobs(self, run_log: dict[str, Any], stats: Sequence[Any]) -> None:
        """Add the publish job's own cost after it committed (best effort: a log, not data)."""
        if not stats:
            return
        rows = pl.DataFrame([{"run_id": run_log["run_id"], "model": run_log["model"],
                              "logical_date": run_log["logical_date"], "job_id": s.job_id,
                              "kind": s.kind, "bytes_processed": s.bytes_processed,
                              "bytes_billed": s.bytes_billed, "slot_ms": s.slot_ms,
                              "reused": s.reused} for s in stats], schema=meta.JOBS)
        try:
            self._run(values_insert(_q(self.ref.project, self.ref.meta, "jobs"), rows), [], "log")
        except Exception as err:
            log.warning("could not record the cost of %s: %s", run_log["model"], err)

    def record_quality(self, rows: pl.DataFrame) -> None:
        if rows.height:
            self._append("quality_results", rows.cast(meta.quality_schema()))

    def log_failure(self, row: dict[str, Any]) -> None:
        self._append("run_log", pl.DataFrame([{c: row.get(c) for c in RUN_LOG_COLUMNS}],
                                             schema=meta.RUN_LOG))

    def _append(self, table: str, rows: pl.DataFrame) -> None:
        name = self.upload(f"_{table}_{uuid.uuid4().hex[:12]}", rows)
        cols = ", ".join(f"`{c}`" for c in rows.columns)
        self._run(f"INSERT INTO {_q(self.ref.project, self.ref.meta, table)} ({cols}) "
                  f"SELECT {cols} FROM {_q(self.ref.project, self.ref.staging, name)}", [], "log")
        self.drop_staged(name)

    def watermarks(self) -> pl.DataFrame:
        self.ensure_datasets()
        return self.query("SELECT * FROM _starsmith.watermarks ORDER BY model, logical_date")

    def landings(self) -> pl.DataFrame:
        self.ensure_datasets()
        return self.query("SELECT * FROM _starsmith.landings ORDER BY model, source, landed_day")

    def restatements(self) -> pl.DataFrame:
        self.ensure_datasets()
        return self.query("SELECT * FROM _starsmith.restatements ORDER BY model")

    def mark_restatements(self, rows: pl.DataFrame) -> None:
        """Keep the earliest day per model: the marks already there are merged with these."""
        if not rows.height:
            return
        merged = pl.concat([self.restatements().select("model", "from_day", "reason"),
                            rows.select("model", "from_day", "reason")], how="vertical_relaxed")
        merged = merged.sort("from_day").unique("model", keep="first").with_columns(
            recorded_at=pl.lit(datetime.now(), dtype=pl.Datetime("us"))).cast(
            dict(meta.RESTATEMENTS))  # type: ignore[arg-type]
        self.query("DELETE FROM _starsmith.restatements WHERE model IN (SELECT model FROM _m)",
                   _m=merged.select("model"))
        self._append("restatements", merged)

    def run_log(self) -> pl.DataFrame:
        self.ensure_datasets()
        return self.query("SELECT * FROM _starsmith.run_log ORDER BY started_at")

    def upkeep(self, *, midway: bool = False) -> None:
        """Nothing to do: BigQuery manages its own storage."""

    def job_log(self) -> pl.DataFrame:
        self.ensure_datasets()
        return self.query("SELECT * FROM _starsmith.jobs ORDER BY model, logical_date")
