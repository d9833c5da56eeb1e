"""The server's state: the one reference to the served version, and the watcher that swaps it.

Version switch, in order:

1. The pipeline promotes a version: its checkpoint, LanceDB table and candidates are
   complete before ``models/current.json`` is replaced (one ``os.replace``).
2. The watcher thread reads ``current.json`` every ``reload_interval_seconds`` (a file of
   ~100 bytes) together with the targets of the ``dataset`` and ``features`` links. When
   that key differs from what is served, it loads the new version whole in the background
   (:func:`serving.load.load_version`: model, item index, seen items, warm-up), while the
   old version keeps serving.
3. Only a complete, checked :class:`~serving.loaded.Loaded` is swapped in, by assigning one
   attribute (atomic in Python). A request reads ``state.loaded`` once at its start and uses
   that object to the end: it is answered entirely by the old version or entirely by the
   new one, and none fails because of the switch. The old object is freed when its last
   request finishes.

A version that fails to load (a missing table, a corrupt checkpoint) is not swapped in: the
previous version keeps serving, ``/readyz`` turns 503 and names the error, and the load is
retried every ``retry_failed_seconds``.

With an artifact store (``RECSYS_ARTIFACT_STORE``, ``recsys.objectstore``), the watcher reads
the store's pointer instead of the data folder's ``current.json``, and a version is
downloaded from the store (checked against its manifest) and its item table opened there;
the switch is the same.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from recsys.objectstore import artifact_store
from recsys.registry import ModelRegistry
from recsys.settings import Paths, Settings
from serving.load import load_version, source_key
from serving.loaded import Loaded
from serving.metrics import Metrics
from serving.online import OnlineReader, online_reader
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    key: tuple[str, str, str] | None  # what could not be loaded (None: current.json unreadable)
    error: str
    at: float  # time.monotonic()


class ServingState:
    """What the request handlers share: the Feast store and the served :class:`Loaded`."""

    def __init__(self, settings: ServingSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.paths = Paths(settings.data_dir)
        self.registry = ModelRegistry(self.paths.models)
        folder: dict[str, Any] = {"data_dir": settings.data_dir}
        self.artifacts = artifact_store(Settings(**folder))  # None: versions in data_dir
        self.metrics = metrics
        self.loaded: Loaded | None = None  # the one reference a switch replaces
        self.store: Any = None  # feast.FeatureStore
        self.store_error: str | None = None
        self._readers: dict[str, OnlineReader] = {}  # online lookups, by feature service
        self.failure: Failure | None = None
        self.loading: str | None = None  # version being loaded right now
        self._refresh_lock = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- Feast ----------------------------------------------------------------------------
    def open_store(self) -> None:
        """The data folder's Feast store (``import feast`` alone takes seconds: once)."""
        from recsys.store import feature_store_for

        try:
            folder: dict[str, Any] = {"data_dir": self.settings.data_dir}
            self.store = feature_store_for(Settings(**folder))
            self.store_error = None
        except Exception as exc:  # a data folder without a Feast registry yet
            log.exception("cannot open the Feast store of %s", self.settings.data_dir)
            self.store_error = f"{type(exc).__name__}: {exc}"

    def online_store_description(self) -> str:
        """Which online store lookups go to, for error messages."""
        if self.store is None:
            return f"Feast store not opened: {self.store_error}"
        from recsys.store import online_store_description

        return online_store_description(self.store.config)

    def online_row(self, service: str, user_id: int) -> dict[str, Any]:
        """The online features of one user from a Feast feature service, one value per
        feature (``None`` where the store has nothing); ``serving.online`` says how."""
        if self.store is None:
            raise RuntimeError(f"Feast store unavailable: {self.store_error}")
        reader = self._readers.get(service)
        if reader is None:  # built once per service, and again after each version switch
            direct = self.settings.online_reader == "direct"
            timeout = self.settings.online_timeout_seconds
            reader = online_reader(self.store, service, direct, timeout)
            self._readers[service] = reader
        return reader(user_id)

    # --- versions -------------------------------------------------------------------------
    def refresh(self) -> Loaded | None:
        """Load and swap in the version ``current.json`` names, if it is not the one served
        (or its dataset/features were republished). Returns the served version."""
        with self._refresh_lock:
            try:
                version = self.current()
            except Exception as exc:  # unreadable current.json: keep serving what we have
                self.failure = Failure(None, f"cannot read current.json: {exc}", time.monotonic())
                return self.loaded
            if version is None:
                self.failure = Failure(None, "no model version promoted yet", time.monotonic())
                return self.loaded
            try:
                key = source_key(self.paths, version, self.artifacts)
            except Exception as exc:  # the store's dataset or features: keep serving
                self.failure = Failure(None, f"{type(exc).__name__}: {exc}", time.monotonic())
                return self.loaded
            served = self.loaded
            if served is not None and served.source == key:
                self.failure = None  # e.g. a rollback to the served version after a failure
                return served
            failed = self.failure
            if (
                failed is not None
                and failed.key == key
                and time.monotonic() - failed.at < self.settings.retry_failed_seconds
            ):
                return served
            self.loading = version
            try:
                loaded = load_version(
                    self.paths,
                    version,
                    self.settings.search_mode,
                    self.settings.hnsw_ef,
                    self.settings.compute_threads,
                    self.artifacts,
                )
            except Exception as exc:
                log.exception("cannot load model version %s; still serving %s", version,
                              served.version if served else "nothing")  # fmt: skip
                self.metrics.model_loads.labels("failure").inc()
                self.failure = Failure(key, f"{type(exc).__name__}: {exc}", time.monotonic())
                return served
            finally:
                self.loading = None
            self.loaded = loaded  # the swap
            # Long-lived objects (the version's model, tables and index, the imports) leave
            # the cyclic collector's view, so its full passes walk only what requests
            # allocate instead of pausing every request for the whole heap. Unfreezing first
            # lets the replaced version's cycles be collected, once per switch.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.failure = None
            self._readers = {}  # re-resolved on the next lookup (a new `feast apply`)
            self.metrics.model_loads.labels("success").inc()
            self.metrics.served(loaded.version, loaded.load_seconds, loaded.loaded_at,
                                loaded.fallback, loaded.model_kind)  # fmt: skip
            if served is not None and served.version != loaded.version:
                log.info("switched from model version %s to %s", served.version, loaded.version)
            return loaded

    def current(self) -> str | None:
        """The version to serve: the artifact store's pointer, else the data folder's."""
        return self.artifacts.current() if self.artifacts else self.registry.current()

    def start_watcher(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="version-watcher", daemon=True)
        self._thread.start()

    def stop_watcher(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_seconds):
            try:
                self.refresh()
            except Exception:  # never let the watcher die: the next tick retries
                log.exception("version watcher")

    # --- readiness ------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when a consistent version is served and it is the one ``current.json``
        names, or a switch to that one is in progress (the old version is complete and
        keeps serving until then). Not ready when nothing is loaded, the Feast store is
        missing, or the version ``current.json`` names failed to load."""
        loaded, failure = self.loaded, self.failure
        try:
            current: str | None = self.current()
        except Exception as exc:
            current, failure = None, Failure(None, f"cannot read current.json: {exc}", 0.0)
        body: dict[str, Any] = {
            "model_version": loaded.version if loaded else None,
            "current": current,
            "loading": self.loading,
            "error": failure.error if failure else None,
        }
        if self.store is None:
            reason = f"Feast store unavailable: {self.store_error}"
        elif loaded is None:
            reason = "no model version loaded" + (f": {failure.error}" if failure else "")
        elif current is None:
            reason = "models/current.json names no version" + (
                f" ({failure.error})" if failure else ""
            )
        elif (
            current != loaded.version
            and failure is not None
            and failure.key is not None
            and (failure.key[0] == current)
        ):
            reason = (
                f"current version {current} failed to load ({failure.error}); "
                f"still serving {loaded.version}"
            )
        else:
            body.update(
                ready=True,
                switching=current != loaded.version,
                as_of=loaded.as_of.isoformat(),
                items=loaded.index.rows,
                search=f"{loaded.index.mode} ({loaded.index.index_type})",
                user_tower=loaded.tower_kind,
                fallback=loaded.fallback,
                model_kind=loaded.model_kind,
                derived_from=loaded.derived_from,
                catalogue=loaded.catalogue,
            )
            return True, body
        body.update(ready=False, reason=reason)
        return False, body
