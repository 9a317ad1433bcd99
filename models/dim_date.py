"""The calendar: 2020 to 2030, fiscal year from July, Portuguese public holidays (fixed dates)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import polars as pl

from starsmith.contract import BuildContext, Column, Kind, Model, Strategy
from starsmith.dimensions.date_dim import DATE_SCHEMA, date_dimension

FIRST, LAST = date(2020, 1, 1), date(2030, 12, 31)
FISCAL_YEAR_START_MONTH = 7
FIXED_HOLIDAYS = {(1, 1): "New Year's Day", (4, 25): "Freedom Day", (5, 1): "Labour Day",
                  (6, 10): "Portugal Day", (8, 15): "Assumption", (10, 5): "Republic Day",
                  (11, 1): "All Saints", (12, 1): "Restoration of Independence",
                  (12, 8): "Immaculate Conception", (12, 25): "Christmas Day"}
HOLIDAYS = {date(y, m, d): name for y in range(FIRST.year, LAST.year + 1)
            for (m, d), name in FIXED_HOLIDAYS.items()}
DESCRIPTIONS = {
    "date_key": "yyyymmdd; -1 Unknown, -2 Not applicable",
    "day_of_week": "ISO weekday, Monday = 1",
    "fiscal_year": "named by the calendar year it ends in (July to June)",
}


def transform(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return date_dimension(FIRST, LAST, fiscal_year_start_month=FISCAL_YEAR_START_MONTH,
                          holidays=HOLIDAYS)


MODEL = Model(
    name="dim_date",
    kind=Kind.DIMENSION,
    inputs=(),
    columns=tuple(Column(c, t, DESCRIPTIONS.get(c, c.replace("_", " ")), nullable=c != "date_key")
                  for c, t in DATE_SCHEMA.items()),
    transform=transform,
    strategy=Strategy.FULL,
    unique_key=("date_key",),
    description="One row per calendar day, keyed yyyymmdd.",
)
