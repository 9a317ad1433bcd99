"""The date dimension: keys, ISO weeks, fiscal periods, holidays, reserved members."""

from __future__ import annotations

from datetime import date

from starsmith.dimensions.date_dim import date_dimension


def test_calendar_fiscal_and_holiday_attributes() -> None:
    dim = date_dimension(date(2024, 6, 29), date(2025, 1, 1), fiscal_year_start_month=7,
                         holidays={date(2024, 12, 25): "Christmas Day"}).collect()
    assert dim["date_key"][:2].to_list() == [-2, -1]
    row = dim.filter(dim["date_key"] == 20240701).row(0, named=True)
    assert (row["fiscal_year"], row["fiscal_quarter"], row["quarter"]) == (2025, 1, 3)
    assert (row["day_name"], row["day_of_week"], row["is_weekend"]) == ("Monday", 1, False)
    sat = dim.filter(dim["date_key"] == 20240629).row(0, named=True)
    assert sat["is_weekend"] and sat["fiscal_year"] == 2024 and sat["fiscal_quarter"] == 4
    xmas = dim.filter(dim["date_key"] == 20241225).row(0, named=True)
    assert xmas["is_holiday"] and xmas["holiday_name"] == "Christmas Day"
    new_year = dim.filter(dim["date_key"] == 20250101).row(0, named=True)
    assert (new_year["iso_year"], new_year["iso_week"]) == (2025, 1)
    dec30 = dim.filter(dim["date_key"] == 20241230).row(0, named=True)
    assert (dec30["iso_year"], dec30["iso_week"]) == (2025, 1)  # ISO week belongs to 2025
    assert dim.height == 2 + (date(2025, 1, 1) - date(2024, 6, 29)).days + 1
