"""The date dimension, generated for a range: calendar, ISO week, fiscal periods, holidays.

``date_key`` is yyyymmdd as an integer, so fact tables can be partitioned and read by it and a
person can read it. The reserved members -1 and -2 carry no date.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import polars as pl

from starsmith.dimensions.spec import NOT_APPLICABLE_KEY, UNKNOWN_KEY

DATE_SCHEMA = pl.Schema({
    "date_key": pl.Int64(), "date": pl.Date(), "year": pl.Int32(), "quarter": pl.Int8(),
    "month": pl.Int8(), "month_name": pl.String(), "day_of_month": pl.Int8(),
    "day_of_week": pl.Int8(), "day_name": pl.String(), "iso_year": pl.Int32(),
    "iso_week": pl.Int8(), "is_weekend": pl.Boolean(), "fiscal_year": pl.Int32(),
    "fiscal_quarter": pl.Int8(), "is_holiday": pl.Boolean(), "holiday_name": pl.String(),
})


def date_key(col: str | pl.Expr) -> pl.Expr:
    """yyyymmdd of a Date expression; NULL stays NULL (callers map it to -2)."""
    c = pl.col(col) if isinstance(col, str) else col
    return (c.dt.year().cast(pl.Int64) * 10_000 + c.dt.month().cast(pl.Int64) * 100
            + c.dt.day().cast(pl.Int64))


def date_dimension(start: date, end: date, *, fiscal_year_start_month: int = 1,
                   holidays: Mapping[date, str] | None = None) -> pl.LazyFrame:
    """Every day from ``start`` to ``end`` inclusive, plus the reserved members.

    The fiscal year is named by the calendar year it ends in (a year starting in July 2024 is
    FY2025), the common convention.
    """
    shift = (13 - fiscal_year_start_month) % 12
    days = pl.LazyFrame({"date": pl.date_range(start, end, "1d", eager=True)})
    hol = pl.LazyFrame(
        {"date": list((holidays or {}).keys()), "holiday_name": list((holidays or {}).values())},
        schema={"date": pl.Date(), "holiday_name": pl.String()},
    )
    d = pl.col("date")
    fiscal_month = ((d.dt.month().cast(pl.Int32) - 1 + shift) % 12) + 1
    out = days.join(hol, on="date", how="left").with_columns(
        date_key=date_key("date"),
        year=d.dt.year(),
        quarter=d.dt.quarter(),
        month=d.dt.month(),
        month_name=d.dt.strftime("%B"),
        day_of_month=d.dt.day(),
        day_of_week=d.dt.weekday(),
        day_name=d.dt.strftime("%A"),
        iso_year=d.dt.iso_year(),
        iso_week=d.dt.week(),
        is_weekend=d.dt.weekday() >= 6,
        fiscal_year=d.dt.year() + pl.when(
            (fiscal_year_start_month > 1) & (d.dt.month() >= fiscal_year_start_month)
        ).then(1).otherwise(0),
        fiscal_quarter=((fiscal_month - 1) // 3 + 1),
        is_holiday=pl.col("holiday_name").is_not_null(),
    )
    reserved = pl.LazyFrame(
        {"date_key": [UNKNOWN_KEY, NOT_APPLICABLE_KEY], "month_name": ["Unknown", "Not applicable"],
         "day_name": ["Unknown", "Not applicable"], "holiday_name": [None, None]},
    )
    cast = [pl.col(c).cast(t) for c, t in DATE_SCHEMA.items()]
    reserved = reserved.with_columns(
        pl.lit(None).alias(c) for c in DATE_SCHEMA.names() if c not in reserved.collect_schema()
    )
    return pl.concat([reserved.select(cast), out.select(cast)]).sort("date_key")
