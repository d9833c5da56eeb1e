"""Which catalogue columns feed which input of the towers (`recsys.features.encoding`).

Derived from the features' encodings, in declaration order: every user CATEGORICAL feature
is a column of ``cats``, every NUMERIC / LOG_NUMERIC one two columns of ``nums`` (the value,
log1p first for LOG_NUMERIC, and a missing flag), and so on for each :class:`Encoding`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from recsys.features.spec import Catalog, Encoding

NUMERIC = (Encoding.NUMERIC, Encoding.LOG_NUMERIC)
# Statistics of the history's per-position features, fitted beside the numerics' own.
HISTORY_STATS = ("history_rating", "history_log_hours")


@dataclass(frozen=True)
class TowerColumns:
    """The feature columns behind each tower input, in the catalogue's declaration order."""

    user_cats: tuple[str, ...]
    user_nums: tuple[tuple[str, bool], ...]  # (column, log1p?): counts are heavy-tailed
    affinity: str
    history_items: str
    history_ratings: str
    history_times: str
    item_genres: str
    item_nums: tuple[tuple[str, bool], ...]

    @classmethod
    def of(cls, catalog: Catalog, retired: bool = False) -> TowerColumns:
        """The inputs a new encoder fits; with ``retired``, the retired features too (what a
        saved encoder may have been fitted on)."""

        def inputs(entity: Any) -> list[Any]:
            return [f for f in catalog.features(entity) if retired or not f.retired]

        def nums(entity: Any) -> tuple[tuple[str, bool], ...]:
            return tuple((f.name, f.encoding == Encoding.LOG_NUMERIC)
                         for f in inputs(entity) if f.encoding in NUMERIC)  # fmt: skip

        def one(entity: Any, encoding: Encoding) -> str:
            found = catalog.features(entity, encoding)
            if len(found) != 1:
                raise ValueError(f"the towers need exactly one {entity} feature encoded "
                                 f"{encoding.value}; the catalogue has {len(found)}")  # fmt: skip
            return found[0].name

        return cls(
            user_cats=tuple(f.name for f in inputs("user") if f.encoding == Encoding.CATEGORICAL),
            user_nums=nums("user"),
            affinity=one("user", Encoding.GENRE_SHARES),
            history_items=one("user", Encoding.HISTORY_ITEMS),
            history_ratings=one("user", Encoding.HISTORY_RATINGS),
            history_times=one("user", Encoding.HISTORY_TIMES),
            item_genres=one("item", Encoding.GENRE_BAG),
            item_nums=nums("item"),
        )

    def fitted(self, cats: dict[str, Any], stats: dict[str, Any]) -> TowerColumns:
        """The columns an encoder was fitted on, in its fit's order (``cats``' keys, ``stats``'
        keys, as the checkpoint keeps them): a checkpoint keeps its own inputs when features
        are added to the catalogue or reordered in it."""
        logged = dict((*self.user_nums, *self.item_nums))
        unknown = [n for n in cats if n not in self.user_cats]
        unknown += [n for n in stats if n not in logged and n not in HISTORY_STATS]
        if unknown:
            raise ValueError(f"the encoder was fitted on {unknown}, which the catalogue does "
                             "not declare as tower inputs: declare them, or retrain")  # fmt: skip
        users = {name for name, _ in self.user_nums}
        return replace(
            self,
            user_cats=tuple(cats),
            user_nums=tuple((n, logged[n]) for n in stats if n in users),
            item_nums=tuple((n, logged[n]) for n in stats if n in logged and n not in users),
        )
