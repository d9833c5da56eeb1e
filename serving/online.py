"""Online feature lookups of one user: Feast's Python API, or its SQLite or Redis online
store read directly.

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
every user (and an unknown one) of both services.

:class:`RedisOnlineReader` does the same against Feast's ``redis`` online store (the cluster
profile) in one round trip: every view of a service is keyed by ``user_id`` alone, and
Feast stores all views of an entity in one hash (key: ``serialize_entity_key`` + project;
field: murmur3 of ``<view>:<feature>``, as ``RedisOnlineStore.online_read`` names them), so
one HMGET reads the whole service; ``tests/cluster/test_online_redis.py`` checks it against
``to_dict()`` for every user. Its client fails fast (``timeout_seconds``, no retries): a
request never waits on a dead Redis, and the next one reconnects.

Feast is kept for everything else, and :func:`online_reader` falls back to it when the
online store is neither (or a Redis Cluster) or a service does not fit (two views with one
feature name, a view keyed by more than ``user_id``).
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


def _service_features(store: Any, service_name: str) -> list[tuple[Any, Any]]:
    """(feature view, feature) of each feature of the service, every view keyed by
    ``user_id`` alone and every feature name once (``Unsupported`` otherwise)."""
    service = store.get_feature_service(service_name)
    found: list[tuple[Any, Any]] = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        if [e.name for e in view.entity_columns] != [JOIN_KEY]:
            raise Unsupported(f"view {view.name} is not keyed by {JOIN_KEY} alone")
        found += [(view, feature) for feature in projection.features]
    names = [feature.name for _, feature in found]
    if len(set(names)) < len(names):
        raise Unsupported(f"a feature name of {service_name} is in two views")
    return found


class SqliteOnlineReader:
    """One feature service's online values for one user, from Feast's SQLite online store."""

    def __init__(self, store: Any, service_name: str) -> None:
        from feast.infra.online_stores.helpers import compute_table_id

        config = store.config
        if getattr(config.online_store, "type", None) != "sqlite":
            raise Unsupported(f"online store is {config.online_store.type!r}, not sqlite")
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        features = _service_features(store, service_name)
        views = {view.name: view for view, _ in features}
        tables = [compute_table_id(config.project, view, versioning) for view in views.values()]
        self.types = {f.name: f.dtype.to_value_type() for _, f in features}  # -> ValueType
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


class RedisOnlineReader:
    """One feature service's online values for one user, from Feast's Redis online store,
    in one HMGET."""

    def __init__(self, store: Any, service_name: str, timeout_seconds: float = 1.0) -> None:
        import redis
        from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
        from feast.infra.online_stores.redis import RedisOnlineStore
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        config = store.config
        online = config.online_store
        if getattr(online, "type", None) != "redis":
            raise Unsupported(f"online store is {online.type!r}, not redis")
        if online.redis_type != "redis" or online.client != "redis":
            raise Unsupported(f"redis_type {online.redis_type}, client {online.client}")
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        features = _service_features(store, service_name)
        self.names = [feature.name for _, feature in features]
        self.types = [feature.dtype.to_value_type() for _, feature in features]
        self.fields = [
            _mmh3(f"{compute_versioned_name(view, versioning)}:{feature.name}")
            for view, feature in features
        ]
        self.project = config.project
        self.key_version = config.entity_key_serialization_version
        nodes, params = RedisOnlineStore._parse_connection_string(online.connection_string)
        params.update(socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds)
        self.client = redis.Redis(
            host=nodes[0]["host"], port=int(nodes[0]["port"]), retry=Retry(NoBackoff(), 0),
            **params,
        )  # fmt: skip

    def __call__(self, user_id: int) -> dict[str, Any]:
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        entity = EntityKey(join_keys=[JOIN_KEY], entity_values=[Value(int64_val=user_id)])
        key = _redis_key(self.project, entity, self.key_version)
        row: dict[str, Any] = {JOIN_KEY: user_id}
        blobs = self.client.hmget(key, self.fields)
        for name, kind, blob in zip(self.names, self.types, blobs, strict=True):
            if blob is None:
                row[name] = None
                continue
            value = Value()
            value.ParseFromString(blob)
            row[name] = feast_value_type_to_python_type(value, kind)
        return row

    def close(self) -> None:
        self.client.close()


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


def online_reader(
    store: Any, service_name: str, direct: bool = True, timeout_seconds: float = 1.0
) -> OnlineReader:
    """The direct reader of the store's kind (SQLite, Redis) when ``direct`` and the store
    allows it, else Feast's API."""
    if direct:
        kind = getattr(store.config.online_store, "type", None)
        try:
            if kind == "redis":
                return RedisOnlineReader(store, service_name, timeout_seconds)
            return SqliteOnlineReader(store, service_name)
        except Unsupported as exc:
            log.warning("online lookups of %s through Feast's API: %s", service_name, exc)
    return feast_reader(store, service_name)
