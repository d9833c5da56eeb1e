"""The feature SQL in another engine's dialect: the DuckDB text the ops render
(`recsys.features.render`), transpiled by sqlglot, with the constructs sqlglot gets wrong
rewritten on its syntax tree.

Fixes are per construct, not per op, so a new op built from these constructs reaches Spark
with no Spark-specific edit:

- ``list(v ORDER BY a, b)``: sqlglot drops the order (Spark's ``collect_list`` has none);
  here the values are collected with their sort keys, sorted, and projected back. DuckDB's
  default ``ASC NULLS LAST`` is kept by sorting on ``a IS NULL`` before ``a`` (Spark sorts a
  struct's null fields first).
- ``epoch_us(ts)`` -> ``unix_micros(ts)``; ``list_reverse`` -> ``reverse``.
- ``x[i:j]`` (DuckDB: 1-based, both ends inclusive) -> ``slice(x, i, j - i + 1)``.
"""

from __future__ import annotations

from typing import Any


def _ordered_list(node: Any, exp: Any) -> Any:
    """``list(v ORDER BY k...)`` as ``transform(array_sort(collect_list(struct(...))), ...)``."""
    order = node.this
    keys: list[Any] = []
    for ordered in order.expressions:
        if ordered.args.get("desc") or ordered.args.get("nulls_first"):
            raise NotImplementedError(f"list ordering {ordered.sql('duckdb')}: only ASC NULLS LAST")
        keys += [exp.Is(this=ordered.this.copy(), expression=exp.Null()), ordered.this.copy()]
    fields = [exp.alias_(k, f"k{i}") for i, k in enumerate(keys)]
    fields.append(exp.alias_(order.this.copy(), "v"))
    collected = exp.Anonymous(this="collect_list", expressions=[exp.Struct(expressions=fields)])
    sorted_ = exp.Anonymous(this="array_sort", expressions=[collected])
    return exp.Transform(
        this=sorted_,
        expression=exp.Lambda(
            this=exp.Dot(this=exp.column("x"), expression=exp.to_identifier("v")),
            expressions=[exp.to_identifier("x")],
        ),
    )


def _slice(node: Any, exp: Any) -> Any:
    (piece,) = node.expressions
    start, end = int(piece.this.this), int(piece.expression.this)
    return exp.Anonymous(
        this="slice",
        expressions=[node.this, exp.Literal.number(start), exp.Literal.number(end - start + 1)],
    )


_RENAMED = {"epoch_us": "unix_micros", "list_reverse": "reverse"}


def _fix(node: Any) -> Any:
    from sqlglot import exp

    if isinstance(node, exp.ArrayAgg) and isinstance(node.this, exp.Order):
        return _ordered_list(node, exp)
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in _RENAMED:
        return exp.Anonymous(this=_RENAMED[str(node.this).lower()], expressions=node.expressions)
    if (
        isinstance(node, exp.Bracket)
        and len(node.expressions) == 1
        and isinstance(node.expressions[0], exp.Slice)
    ):
        return _slice(node, exp)
    return node


def to_spark(sql: str) -> str:
    """``sql`` (DuckDB, as the ops render it) as Spark SQL."""
    import sqlglot

    tree = sqlglot.parse_one(sql, read="duckdb")
    # A rewritten node's children are not visited in the same pass (e.g. the list under a
    # slice): pass again until nothing changes.
    while (fixed := tree.transform(_fix)) != tree:
        tree = fixed
    return tree.sql(dialect="spark")
