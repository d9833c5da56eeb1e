"""Online feature lookups of one user: Feast's Python API, or its SQLite store read directly.

``FeatureStore.get_online_features`` for one entity costs ~0.45 ms on an idle core of this
machine and ~0.85 ms under load (feature resolution, protobuf responses, per-view queries):
a quarter to a third of a whole request, and with two cores shared by the server, the load
generator and other jobs, CPU time per request is what decides the p99 at 200 requests/s.
:class:`SqliteOnlineReader` reads the same rows from the same SQLite file with one indexed
query per request (~0.1 ms), decoding the values with Feast's own functions:

* the table of each feature view of the service: ``compute_table_id(project, view, ...)``,
  as Feast's ``SqliteOnlineStore.online_read`` names it;
* the key: Feast's ``serialize_entity_key`` of ``user_id`` (int64) with the configured
  serialization version;
* each value: a ``ValueProto`` converted by ``feast_value_type_to_python_type`` with the
  feature's declared type, as ``OnlineResponse.to_dict`` does.

``tests/serving/test_online.py`` checks that it returns exactly ``to_dict()``'s values for
every user (and an unknown one) of both services. Feast is kept for everything else, and
:func:`online_reader` falls back to it when the online store is not SQLite or a service
does not fit (two views with one feature name).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JOIN_KEY = "user_id"
OnlineReader = Callable[[int], dict[str, Any]]


class Unsupported(ValueError):
    """This store or service cannot be read directly; use Feast's API."""


class SqliteOnlineReader:
    """One feature service's online values for one user, from Feast's SQLite online store."""

    def __init__(self, store: Any, service_name: str) -> None:
        from feast.infra.online_stores.helpers import compute_table_id

        config = store.config
        if getattr(config.online_store, "type", None) != "sqlite":
            raise Unsupported(f"online store is {config.online_store.type!r}, not sqlite")
        service = store.get_feature_service(service_name)
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        tables: list[str] = []
        self.types: dict[str, Any] = {}  # feature name -> Feast ValueType
        for projection in service.feature_view_projections:
            view = store.get_feature_view(projection.name)
            if [e.name for e in view.entity_columns] != [JOIN_KEY]:
                raise Unsupported(f"view {view.name} is not keyed by {JOIN_KEY} alone")
            tables.append(compute_table_id(config.project, view, versioning))
            for feature in projection.features:
                if feature.name in self.types:
                    raise Unsupported(f"feature name {feature.name} in two views")
                self.types[feature.name] = feature.dtype.to_value_type()
        self.tables = tables
        self.sql = " UNION ALL ".join(
            f'SELECT feature_name, value FROM "{table}" WHERE entity_key = ?' for table in tables
        )
        self.key_version = config.entity_key_serialization_version
        path = Path(config.online_store.path)
        if not path.is_absolute():
            path = Path(config.repo_path) / path
        # Read-only: this process never writes features. One statement reads every view of
        # the service in one snapshot (Feast reads each view in its own query).
        self.conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=5.0
        )

    def __call__(self, user_id: int) -> dict[str, Any]:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        key = serialize_entity_key(
            EntityKey(join_keys=[JOIN_KEY], entity_values=[Value(int64_val=user_id)]),
            entity_key_serialization_version=self.key_version,
        )
        row: dict[str, Any] = {JOIN_KEY: user_id, **dict.fromkeys(self.types)}
        for name, blob in self.conn.execute(self.sql, [key] * len(self.tables)).fetchall():
            if name in self.types:
                value = Value()
                value.ParseFromString(blob)
                row[name] = feast_value_type_to_python_type(value, self.types[name])
        return row

    def close(self) -> None:
        self.conn.close()


def feast_reader(store: Any, service_name: str) -> OnlineReader:
    """The same lookup through ``FeatureStore.get_online_features``."""
    # get_feature_service re-reads the registry file by default, which costs ~2.5 ms and
    # clears Feast's request-context cache on every call: resolved once.
    service = store.get_feature_service(service_name)

    def read(user_id: int) -> dict[str, Any]:
        response = store.get_online_features(
            features=service, entity_rows=[{JOIN_KEY: user_id}]
        ).to_dict()
        return {name: values[0] for name, values in response.items()}

    return read


def online_reader(store: Any, service_name: str, direct: bool = True) -> OnlineReader:
    """The direct SQLite reader when ``direct`` and the store allows it, else Feast's API."""
    if direct:
        try:
            return SqliteOnlineReader(store, service_name)
        except Unsupported as exc:
            log.warning("online lookups of %s through Feast's API: %s", service_name, exc)
    return feast_reader(store, service_name)
