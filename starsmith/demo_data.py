"""A deterministic landing zone for a retail business that changes day by day.

``write_landing(root, days, scale, seed)`` simulates the business one day at a time from one seeded
random stream, so day N's files are the same whether 3 or 30 days are generated. Everything is
vectorised (numpy draws, Polars frames): ``scale=10000`` reaches 10M customers and, over two weeks,
100M+ order lines.

The dirt real sources have, at these documented rates (``DIRT``):

============================  =====================================================================
customers                     1% exact duplicate rows; 0.2% NULL customer_id; 0.5% unknown segment
                              code "XX"; 10% of changed customers change 2-3 times in one day;
                              0.5% of changes land a day late; 0.2%/day deleted, 20% of them return
orders                        1% reference a customer who first appears in the next day's extract;
                              0.3% guest orders (NULL customer); 0.2% unknown store 9999;
                              2% land 1-3 days late
order_lines                   0.5% exact duplicates; 0.2% NULL product_id; 2% returned 1-5 days
                              later as negative lines (line_no + 1000)
shipments                     1% of milestones land a day late (out of order)
inventory                     0.5% of product x store pairs missing on a day
============================  =====================================================================
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from starsmith.contract import Source
from starsmith.loaders.landed import write_manifest

START = date(2024, 1, 1)
SEGMENTS = np.array(["CONS", "CORP", "SMB"])
CITIES = np.array(["Lisbon", "Porto", "Braga", "Faro", "Coimbra", "Aveiro", "Evora", "Leiria"])
CATEGORIES = np.array(["grocery", "garden", "toys", "books", "kitchen", "sports", "audio"])
CHANNELS = np.array(["web", "store", "phone"])
DIRT = {
    "customer_duplicates": 0.01, "customer_null_id": 0.002, "customer_bad_segment": 0.005,
    "customer_multi_change": 0.10, "customer_late": 0.005, "customer_delete": 0.002,
    "customer_return": 0.20, "order_future_customer": 0.01, "order_guest": 0.003,
    "order_unknown_store": 0.002, "order_late": 0.02, "line_duplicates": 0.005,
    "line_null_product": 0.002, "line_return": 0.02, "milestone_late": 0.01,
    "inventory_missing": 0.005,
}


def _contracts(sources: Mapping[str, Source] | None) -> tuple[dict[str, pl.Schema], dict[str, str]]:
    """Each demo source's schema and format, from the demo project's declarations."""
    if sources is None:
        from starsmith.scaffold import demo_catalogue

        sources = demo_catalogue().sources
    found = {s.name: s for s in sources.values()}
    return {n: s.schema for n, s in found.items()}, {n: s.format for n, s in found.items()}


def day_folder(root: Path, source: str, day: date) -> Path:
    return root / source / f"date={day.isoformat()}"


@dataclass
class _World:
    rng: np.random.Generator
    scale: float
    live: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    segment: np.ndarray = field(default_factory=lambda: np.zeros(0, "U4"))
    address_no: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    email_no: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    city: np.ndarray = field(default_factory=lambda: np.zeros(0, "U8"))
    price: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    category: np.ndarray = field(default_factory=lambda: np.zeros(0, "U8"))
    product_live: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    store_names: list[str] = field(default_factory=list)
    next_order: int = 1
    pending: dict[tuple[str, date], list[pl.DataFrame]] = field(default_factory=lambda: defaultdict(list))

    @property
    def n_new_customers(self) -> int:
        return max(1, int(10 * self.scale))

    def grow_customers(self, n: int) -> np.ndarray:
        start = self.live.size
        self.live = np.concatenate([self.live, np.ones(n, bool)])
        self.segment = np.concatenate([self.segment, self.rng.choice(SEGMENTS, n)])
        self.address_no = np.concatenate([self.address_no, self.rng.integers(1, 999, n)])
        self.email_no = np.concatenate([self.email_no, np.zeros(n, np.int64)])
        self.city = np.concatenate([self.city, self.rng.choice(CITIES, n)])
        return np.arange(start, start + n)


def _times(rng: np.random.Generator, day: date, n: int) -> np.ndarray:
    base = np.datetime64(datetime(day.year, day.month, day.day), "us")
    return base + rng.integers(0, 86_400_000_000, n).astype("timedelta64[us]")


def _customer_rows(w: _World, idx: np.ndarray, ts: np.ndarray, op: str) -> pl.DataFrame:
    ids = idx + 1
    return pl.DataFrame({
        "customer_id": ids,
        "name": "Customer " + pl.Series(ids).cast(pl.String),
        "email": "c" + pl.Series(ids).cast(pl.String) + "." + pl.Series(w.email_no[idx]).cast(pl.String)
        + "@example.com",
        "address": pl.Series(w.address_no[idx]).cast(pl.String) + " Rua Augusta",
        "city": w.city[idx],
        "segment": w.segment[idx],
        "op": np.full(idx.size, op),
        "updated_at": ts,
    })


def _customers(w: _World, day: date, day_no: int) -> pl.DataFrame:
    rng = w.rng
    if day_no == 0:
        idx = w.grow_customers(max(10, int(1000 * w.scale)))
        frames = [_customer_rows(w, idx, _times(rng, day, idx.size), "I")]
    else:
        live = np.flatnonzero(w.live)
        frames = []
        changed = rng.choice(live, max(1, int(0.02 * live.size)), replace=False)
        repeat = changed[rng.random(changed.size) < DIRT["customer_multi_change"]]
        for batch in (changed, repeat, repeat[: repeat.size // 2]):
            kind = rng.integers(0, 4, batch.size)  # 0,1 address; 2 segment; 3 email
            w.address_no[batch[kind < 2]] = rng.integers(1, 999, int((kind < 2).sum()))
            w.segment[batch[kind == 2]] = rng.choice(SEGMENTS, int((kind == 2).sum()))
            w.email_no[batch[kind == 3]] += 1
            frames.append(_customer_rows(w, batch, _times(rng, day, batch.size), "U"))
        gone = rng.choice(live, max(1, int(DIRT["customer_delete"] * live.size)), replace=False)
        w.live[gone] = False
        frames.append(_customer_rows(w, gone, _times(rng, day, gone.size), "D"))
        dead = np.flatnonzero(~w.live)
        back = dead[rng.random(dead.size) < DIRT["customer_return"] / 5]
        w.live[back] = True
        frames.append(_customer_rows(w, back, _times(rng, day, back.size), "I"))
        new = w.grow_customers(w.n_new_customers)
        frames.append(_customer_rows(w, new, _times(rng, day, new.size), "I"))
    df = pl.concat(frames).sort("updated_at")
    df = df.with_columns(change_seq=pl.int_range(pl.len(), dtype=pl.Int64) + day_no * 10**9)
    n = df.height
    bad_seg = rng.random(n) < DIRT["customer_bad_segment"]
    null_id = rng.random(n) < DIRT["customer_null_id"]
    df = df.with_columns(
        segment=pl.when(pl.Series(bad_seg)).then(pl.lit("XX")).otherwise("segment"),
        customer_id=pl.when(pl.Series(null_id)).then(None).otherwise("customer_id"),
    )
    dups = df.filter(pl.Series(rng.random(n) < DIRT["customer_duplicates"]))
    late = pl.Series((rng.random(n) < DIRT["customer_late"]) & (day_no > 0))
    w.pending[("customers", day + timedelta(days=1))].append(df.filter(late))
    return pl.concat([df.filter(~late), dups])


def _products(w: _World, day: date, day_no: int) -> pl.DataFrame:
    rng = w.rng
    n_new = max(50, int(200 * w.scale ** 0.5)) if day_no == 0 else max(1, int(w.price.size * 0.005))
    w.price = np.concatenate([w.price, rng.integers(100, 50_000, n_new)])
    w.category = np.concatenate([w.category, rng.choice(CATEGORIES, n_new)])
    w.product_live = np.concatenate([w.product_live, np.ones(n_new, bool)])
    if day_no:
        n = w.price.size
        repriced = rng.random(n) < 0.01
        w.price[repriced] = (w.price[repriced] * rng.uniform(0.8, 1.2, int(repriced.sum()))).astype(np.int64)
        recat = rng.random(n) < 0.003
        w.category[recat] = rng.choice(CATEGORIES, int(recat.sum()))
        w.product_live &= rng.random(n) >= 0.001
    idx = np.flatnonzero(w.product_live)
    ids = pl.Series(idx + 1)
    return pl.DataFrame({
        "product_id": ids, "sku": "SKU-" + ids.cast(pl.String).str.zfill(7),
        "product_name": "Product " + ids.cast(pl.String), "category": w.category[idx],
        "list_price": pl.Series(w.price[idx] / 100).cast(pl.Decimal(12, 2)),
    })


def _stores(w: _World, day: date, day_no: int) -> pl.DataFrame:
    if day_no == 0:
        w.store_names = [f"Store {i}" for i in range(1, max(5, int(10 * w.scale ** 0.5)) + 1)]
    for i in np.flatnonzero(w.rng.random(len(w.store_names)) < 0.03):
        w.store_names[i] = f"{w.store_names[i].split(' (')[0]} ({day:%b %d})"
    ids = np.arange(1, len(w.store_names) + 1)
    return pl.DataFrame({"store_id": ids, "store_name": w.store_names,
                         "city": CITIES[ids % CITIES.size], "region": np.where(ids % 2, "North", "South")})


def _orders(w: _World, day: date, n_stores: int) -> dict[str, pl.DataFrame]:
    rng = w.rng
    n = max(10, int(300 * w.scale))
    ids = np.arange(w.next_order, w.next_order + n)
    w.next_order += n
    live = np.flatnonzero(w.live) + 1
    cust = rng.choice(live, n).astype(np.float64)
    future = rng.random(n) < DIRT["order_future_customer"]
    cust[future] = w.live.size + 1 + rng.integers(0, w.n_new_customers, int(future.sum()))
    cust[rng.random(n) < DIRT["order_guest"]] = np.nan
    store = rng.integers(1, n_stores + 1, n)
    store[rng.random(n) < DIRT["order_unknown_store"]] = 9999
    ts = _times(rng, day, n)
    orders = pl.DataFrame({"order_id": ids, "customer_id": pl.Series(cust).fill_nan(None).cast(pl.Int64),
                           "store_id": store, "order_ts": ts, "channel": rng.choice(CHANNELS, n)})
    per = rng.integers(1, 6, n)
    line_order = np.repeat(np.arange(n), per)
    products = np.flatnonzero(w.product_live)
    prod = rng.choice(products, line_order.size)
    qty = rng.integers(1, 6, line_order.size)
    lines = pl.DataFrame({
        "order_id": ids[line_order],
        "line_no": (np.arange(line_order.size) - np.repeat(np.cumsum(per) - per, per) + 1).astype(np.int32),
        "product_id": pl.Series(prod + 1).cast(pl.Int64),
        "quantity": qty.astype(np.int32),
        "unit_price": pl.Series(w.price[prod] / 100).cast(pl.Decimal(12, 2)),
        "discount": pl.Series(np.where(rng.random(line_order.size) < 0.1, qty * w.price[prod] / 1000, 0.0)
                              ).round(2).cast(pl.Decimal(12, 2)),
        "line_ts": ts[line_order],
    })
    no_product = pl.Series(rng.random(lines.height) < DIRT["line_null_product"])
    lines = lines.with_columns(product_id=pl.when(no_product).then(None).otherwise("product_id"))
    returned = lines.filter(pl.Series(rng.random(lines.height) < DIRT["line_return"]))
    lines = pl.concat([lines, lines.filter(pl.Series(rng.random(lines.height) < DIRT["line_duplicates"]))])
    return_lag = pl.Series(rng.integers(1, 6, returned.height))  # one return date per line
    for lag in range(1, 6):
        part = returned.filter(return_lag == lag)
        ret_day = day + timedelta(days=lag)
        w.pending[("order_lines", ret_day)].append(part.with_columns(
            line_no=pl.col("line_no") + 1000, quantity=-pl.col("quantity"),
            line_ts=pl.col("line_ts") + timedelta(days=lag)))
    late = rng.random(n) < DIRT["order_late"]
    delay = rng.integers(1, 4, n)
    for d in (1, 2, 3):
        sel = ids[late & (delay == d)]
        w.pending[("orders", day + timedelta(days=d))].append(orders.filter(pl.col("order_id").is_in(sel)))
        late_lines = lines.filter(pl.col("order_id").is_in(sel))
        w.pending[("order_lines", day + timedelta(days=d))].append(late_lines)
    keep = ids[~late]
    _milestones(w, orders)
    return {"orders": orders.filter(pl.col("order_id").is_in(keep)),
            "order_lines": lines.filter(pl.col("order_id").is_in(keep))}


def _milestones(w: _World, orders: pl.DataFrame) -> None:
    rng, n = w.rng, orders.height
    hours = np.cumsum(np.stack([np.zeros(n), rng.uniform(0.1, 20, n), rng.uniform(12, 48, n),
                                rng.uniform(24, 96, n)]), axis=0)
    for step, name in enumerate(("ordered", "paid", "shipped", "delivered")):
        ev = orders.select("order_id", milestone=pl.lit(name),
                           event_ts=pl.col("order_ts")
                           + pl.Series(hours[step] * 3.6e9).cast(pl.Duration("us")))
        late = pl.Series(rng.random(n) < DIRT["milestone_late"])
        ev = ev.with_columns(_land=pl.col("event_ts").dt.date() + pl.when(late).then(
            pl.duration(days=1)).otherwise(pl.duration(days=0)))
        for land, part in ev.partition_by("_land", as_dict=True).items():
            w.pending[("shipments", land[0])].append(part.drop("_land"))


def _inventory(w: _World, day: date, n_stores: int) -> pl.DataFrame:
    products = np.flatnonzero(w.product_live) + 1
    pid = np.repeat(products, n_stores)
    sid = np.tile(np.arange(1, n_stores + 1), products.size)
    keep = w.rng.random(pid.size) >= DIRT["inventory_missing"]
    return pl.DataFrame({"snapshot_date": pl.repeat(day, int(keep.sum()), eager=True),
                         "product_id": pid[keep],
                         "store_id": sid[keep],
                         "on_hand": w.rng.integers(0, 200, int(keep.sum())).astype(np.int32)})


def _write(root: Path, source: str, day: date, df: pl.DataFrame, schema: pl.Schema, fmt: str
           ) -> None:
    folder = day_folder(root, source, day)
    folder.mkdir(parents=True, exist_ok=True)
    df = df.select([pl.col(c).cast(t) for c, t in schema.items()])
    target = folder / f"part-0.{fmt}"
    tmp = target.with_suffix(".tmp")
    if fmt == "parquet":
        df.write_parquet(tmp)
    elif fmt == "csv":
        df.write_csv(tmp)
    else:
        df.write_ndjson(tmp)
    tmp.replace(target)  # a reader never sees half a file
    write_manifest(folder, {target.name: df.height})  # last: the day is complete


def write_landing(root: Path, *, days: int, scale: float = 1.0, seed: int = 7,
                  start: date = START, sources: Mapping[str, Source] | None = None
                  ) -> list[date]:
    """Write ``days`` days of every demo source under ``root``; returns the landed dates.

    ``sources`` are the demo project's declarations (default: the shipped demo's)."""
    schemas, formats = _contracts(sources)
    w = _World(rng=np.random.default_rng(seed), scale=scale)
    landed = []
    for day_no in range(days):
        day = start + timedelta(days=day_no)
        out = {"customers": _customers(w, day, day_no), "products": _products(w, day, day_no),
               "stores": _stores(w, day, day_no)}
        n_stores = out["stores"].height
        out |= _orders(w, day, n_stores)
        out["inventory"] = _inventory(w, day, n_stores)
        out["shipments"] = pl.DataFrame(schema=schemas["shipments"])
        for source in out:
            pending = w.pending.pop((source, day), [])
            frames = [out[source].select(schemas[source].names())] + [
                p.select(schemas[source].names()) for p in pending]
            _write(root, source, day, pl.concat(frames, how="vertical_relaxed"),
                   schemas[source], formats[source])
        landed.append(day)
    return landed
