"""The catalogue is checked when it loads: unknown inputs, cycles, duplicates; selection works."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
import pytest

from starsmith.contract import BuildContext, Column, Input, Kind, Model, Strategy
from starsmith.errors import ConfigError, ModelGraphError
from starsmith.registry import build_catalogue
from starsmith.scaffold import demo_catalogue
from starsmith.scaffold import demo_catalogue as load_catalogue

SOURCES = tuple(demo_catalogue().sources.values())


def _t(inputs: Mapping[str, pl.LazyFrame], ctx: BuildContext) -> pl.LazyFrame:
    return pl.LazyFrame({"x": [1]})


def model(name: str, *inputs: str) -> Model:
    return Model(name, Kind.STAGING, tuple(Input(i) for i in inputs),
                 (Column("x", pl.Int64()),), _t, Strategy.FULL)


def test_demo_catalogue_orders_dependencies_first() -> None:
    cat = load_catalogue()
    order = list(cat.order)
    for name in order:
        for up in cat.upstream(name):
            assert order.index(up) < order.index(name)
    assert {"dim_customer", "dim_product", "dim_store", "dim_date"} <= set(order)


def test_unknown_input_suggests_the_closest_name() -> None:
    with pytest.raises(ModelGraphError) as err:
        build_catalogue([model("stg_a", "landing.customers"), model("dim_a", "stg_aa")], SOURCES)
    assert str(err.value) == ("model 'dim_a' reads 'stg_aa', which is neither a model nor a "
                              "source; did you mean 'stg_a'? (in model dim_a)")


def test_a_cycle_is_named_in_full() -> None:
    with pytest.raises(ModelGraphError) as err:
        build_catalogue([model("a", "c"), model("b", "a"), model("c", "b"), model("d")], SOURCES)
    assert str(err.value) == "the models form a cycle: a -> c -> b -> a. Remove one of these inputs"


def test_two_models_with_one_name_are_refused() -> None:
    with pytest.raises(ModelGraphError, match="two models are named 'a'"):
        build_catalogue([model("a"), model("a")], SOURCES)


def test_selection_with_dependants_and_inputs() -> None:
    cat = load_catalogue()
    assert cat.select(["stg_customers+"]) == ["stg_customers", "dim_customer", "fact_sales"]
    assert cat.select(["+dim_product"]) == ["stg_products", "dim_product"]
    with pytest.raises(ModelGraphError, match="did you mean 'dim_customer'"):
        cat.select(["dim_customers"])


def test_model_specs_are_validated() -> None:
    with pytest.raises(ConfigError, match="strategy MERGE needs a unique_key"):
        Model("m", Kind.FACT, (), (Column("x", pl.Int64()),), _t, Strategy.MERGE)


def test_fingerprint_ignores_metadata_but_not_data_changes() -> None:
    base = model("m")
    described = Model(base.name, base.kind, base.inputs, base.columns, base.transform,
                      base.strategy, description="now documented", owner="stewards")
    retyped = Model(base.name, base.kind, base.inputs, (Column("x", pl.Int32()),),
                    base.transform, base.strategy)
    assert base.fingerprint() == described.fingerprint()
    assert base.fingerprint() != retyped.fingerprint()
