# -*- test-case-name: tests.test_store_appointments -*-
"""teos's ``AppointmentsDBM``: watcher appointments and responder trackers in LevelDB.

The database is split by key prefix: ``w`` watcher appointments, ``r`` responder
trackers, ``m`` locator maps, ``ta`` triggered flags, and two whole keys ``bw`` / ``br``
for the last block known by the watcher / responder.  Values are JSON text (dicts for
appointments and trackers, lists of uuids for locator maps), an empty value for a
triggered flag and the bare hash for a last block.

Scans never leak another namespace's entries: a scan of ``P`` skips keys that belong to
a longer registered prefix or whole key starting with ``P`` (a scan of ``"b"`` does not
return ``bw``; one of ``"t"`` does not return ``ta...``).

Single-item methods never raise for bad input: ``store_*`` / ``delete_*`` /
``create_*`` return ``False`` and ``load_*`` return ``None`` (with an error logged).
Batch methods write one LevelDB write batch (all or nothing) and return ``None``; a
non-``str`` uuid in a batch raises ``TypeError`` before anything is written.

Every method has a Deferred twin ``d_<name>`` (see :mod:`p2pnet.store.leveldb`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from twisted.logger import Logger

from p2pnet.store.leveldb import DBManager, deferred_twin
from p2pnet.store.pool import StoreExecutor

log = Logger(namespace="p2pnet.store.appointments")

WATCHER_PREFIX = "w"
WATCHER_LAST_BLOCK_KEY = "bw"
RESPONDER_PREFIX = "r"
RESPONDER_LAST_BLOCK_KEY = "br"
LOCATOR_MAP_PREFIX = "m"
TRIGGERED_APPOINTMENTS_PREFIX = "ta"

#: Every prefix and whole key in use; scans stay inside their own namespace.
NAMESPACES = (
    WATCHER_PREFIX,
    RESPONDER_PREFIX,
    LOCATOR_MAP_PREFIX,
    TRIGGERED_APPOINTMENTS_PREFIX,
    WATCHER_LAST_BLOCK_KEY,
    RESPONDER_LAST_BLOCK_KEY,
)


def _loads(raw: bytes) -> Any:
    """Decode a JSON value; ``ValueError`` for anything that is not UTF-8 JSON."""
    return json.loads(raw.decode("utf-8"))


def _as_str_prefix(prefix: object) -> str | None:
    if isinstance(prefix, str):
        return prefix
    if isinstance(prefix, bytes):
        try:
            return prefix.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


class AppointmentsDBM(DBManager):
    """The appointments database of a watchtower (teos's ``AppointmentsDBM``).

    :param db_path: the database directory (created when missing); ``ValueError``
        unless a ``str``.  See :class:`~p2pnet.store.leveldb.DBManager` for the other
        arguments and the errors it raises.
    """

    def __init__(
        self,
        db_path: str,
        *,
        reactor: Any = None,
        executor: StoreExecutor | None = None,
    ) -> None:
        super().__init__(db_path, reactor=reactor, executor=executor)
        # Locator maps are read-modify-write: one at a time, whatever the thread.
        self._map_lock = threading.Lock()

    # -- scans --------------------------------------------------------------------------

    def _scan(self, prefix: str, snapshot: Any = None) -> Iterator[tuple[str, bytes]]:
        """Entries under ``prefix`` that belong to no longer prefix or whole key."""
        nested = tuple(
            ns[len(prefix) :]
            for ns in NAMESPACES
            if len(ns) > len(prefix) and ns.startswith(prefix)
        )
        for key, value in self.iter_prefix(prefix, snapshot=snapshot):
            if nested and key.startswith(nested):
                continue
            yield key, value

    def _load_dicts(self, prefix: str, snapshot: Any = None) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] = {}
        for uuid, raw in self._scan(prefix, snapshot):
            try:
                value = _loads(raw)
            except ValueError:
                log.error("undecodable entry {uuid} under {prefix!r}", uuid=uuid, prefix=prefix)
                continue
            if not isinstance(value, dict):
                log.error("entry {uuid} under {prefix!r} is not a dict", uuid=uuid, prefix=prefix)
                continue
            data[uuid] = value
        return data

    def load_appointments_db(self, prefix: str | bytes) -> dict[str, dict[str, Any]]:
        """``{uuid: dict}`` of every entry under ``prefix`` (``{}`` when none)."""
        p = _as_str_prefix(prefix)
        if p is None:
            log.error("bad prefix {prefix!r}", prefix=prefix)
            return {}
        return self._load_dicts(p)

    def load_watcher_appointments(
        self, include_triggered: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Every watcher appointment; triggered ones only when ``include_triggered``."""
        with self.raw.snapshot() as snapshot:
            appointments = self._load_dicts(WATCHER_PREFIX, snapshot)
            if not include_triggered:
                for uuid, _ in self._scan(TRIGGERED_APPOINTMENTS_PREFIX, snapshot):
                    appointments.pop(uuid, None)
        return appointments

    def load_responder_trackers(self) -> dict[str, dict[str, Any]]:
        """Every responder tracker, ``{uuid: dict}``."""
        return self._load_dicts(RESPONDER_PREFIX)

    def load_all_triggered_flags(self) -> list[str]:
        """The uuids of every triggered appointment."""
        return [uuid for uuid, _ in self._scan(TRIGGERED_APPOINTMENTS_PREFIX)]

    # -- single items -------------------------------------------------------------------

    def _load_json(self, prefix: str, key: object, what: str) -> Any:
        """The decoded JSON under ``prefix + key``; None when absent, bad key or undecodable."""
        if not isinstance(key, str):
            log.error("{what}: key must be a str, not {t}", what=what, t=type(key).__name__)
            return None
        try:
            raw = self.load_entry(key, prefix)
        except UnicodeError:
            log.error("{what}: key {key!r} is not encodable", what=what, key=key)
            return None
        if raw is None:
            return None
        try:
            return _loads(raw)
        except ValueError:
            log.error("undecodable entry {key} under {prefix!r}", key=key, prefix=prefix)
            return None

    def _load_dict(self, prefix: str, uuid: object) -> dict[str, Any] | None:
        value = self._load_json(prefix, uuid, "load")
        if value is not None and not isinstance(value, dict):
            log.error("entry {uuid} under {prefix!r} is not a dict", uuid=uuid, prefix=prefix)
            return None
        return value

    def _store(self, prefix: str, uuid: object, value: str, what: str) -> bool:
        if not isinstance(uuid, str):
            log.error("{what}: uuid must be a str, not {t}", what=what, t=type(uuid).__name__)
            return False
        try:
            self.create_entry(uuid, value, prefix)
        except UnicodeError:
            log.error("{what}: uuid {uuid!r} is not encodable", what=what, uuid=uuid)
            return False
        log.debug("{what} {uuid}", what=what, uuid=uuid)
        return True

    def _store_dict(self, prefix: str, uuid: object, data: object, what: str) -> bool:
        if not isinstance(data, dict):
            log.error("{what}: {uuid} is not a dict", what=what, uuid=uuid)
            return False
        try:
            encoded = json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as e:
            log.error("{what}: cannot encode {uuid}: {e}", what=what, uuid=uuid, e=e)
            return False
        return self._store(prefix, uuid, encoded, what)

    def _delete(self, prefix: str, uuid: object, what: str) -> bool:
        if not isinstance(uuid, str):
            log.error("{what}: uuid must be a str, not {t}", what=what, t=type(uuid).__name__)
            return False
        try:
            self.delete_entry(uuid, prefix)
        except UnicodeError:
            log.error("{what}: uuid {uuid!r} is not encodable", what=what, uuid=uuid)
            return False
        log.debug("{what} {uuid}", what=what, uuid=uuid)
        return True

    def store_watcher_appointment(self, uuid: str, appointment: dict[str, Any]) -> bool:
        """Store an appointment under ``w``: True when stored, False for bad input."""
        return self._store_dict(WATCHER_PREFIX, uuid, appointment, "store appointment")

    def store_responder_tracker(self, uuid: str, tracker: dict[str, Any]) -> bool:
        """Store a tracker under ``r``: True when stored, False for bad input."""
        return self._store_dict(RESPONDER_PREFIX, uuid, tracker, "store tracker")

    def load_watcher_appointment(self, uuid: str) -> dict[str, Any] | None:
        """The appointment ``uuid``, or None (absent or bad input)."""
        return self._load_dict(WATCHER_PREFIX, uuid)

    def load_responder_tracker(self, uuid: str) -> dict[str, Any] | None:
        """The tracker ``uuid``, or None (absent or bad input)."""
        return self._load_dict(RESPONDER_PREFIX, uuid)

    def delete_watcher_appointment(self, uuid: str) -> bool:
        """True when deleted or absent, False for a bad uuid."""
        return self._delete(WATCHER_PREFIX, uuid, "delete appointment")

    def delete_responder_tracker(self, uuid: str) -> bool:
        """True when deleted or absent, False for a bad uuid."""
        return self._delete(RESPONDER_PREFIX, uuid, "delete tracker")

    def create_triggered_appointment_flag(self, uuid: str) -> bool:
        """Flag ``uuid`` as triggered: True when stored, False for a bad uuid."""
        return self._store(TRIGGERED_APPOINTMENTS_PREFIX, uuid, "", "flag triggered")

    def delete_triggered_appointment_flag(self, uuid: str) -> bool:
        """True when deleted or absent, False for a bad uuid."""
        return self._delete(TRIGGERED_APPOINTMENTS_PREFIX, uuid, "unflag triggered")

    # -- batches ------------------------------------------------------------------------

    @staticmethod
    def _uuid_list(uuids: Iterable[str]) -> list[str]:
        if isinstance(uuids, str | bytes):
            raise TypeError("uuids must be an iterable of str, not a single string")
        items = list(uuids)
        for uuid in items:
            if not isinstance(uuid, str):
                raise TypeError(f"uuid must be a str, not {type(uuid).__name__}")
        return items

    def batch_delete_watcher_appointments(self, uuids: Iterable[str]) -> None:
        """Delete many appointments in one write batch."""
        items = self._uuid_list(uuids)
        self.write_batch(deletes=items, prefix=WATCHER_PREFIX)
        log.debug("deleted {n} appointments", n=len(items))

    def batch_delete_responder_trackers(self, uuids: Iterable[str]) -> None:
        """Delete many trackers in one write batch."""
        items = self._uuid_list(uuids)
        self.write_batch(deletes=items, prefix=RESPONDER_PREFIX)
        log.debug("deleted {n} trackers", n=len(items))

    def batch_create_triggered_appointment_flag(self, uuids: Iterable[str]) -> None:
        """Flag many appointments as triggered in one write batch."""
        items = self._uuid_list(uuids)
        self.write_batch(puts=[(u, "") for u in items], prefix=TRIGGERED_APPOINTMENTS_PREFIX)
        log.debug("flagged {n} appointments as triggered", n=len(items))

    def batch_delete_triggered_appointment_flag(self, uuids: Iterable[str]) -> None:
        """Remove many triggered flags in one write batch."""
        items = self._uuid_list(uuids)
        self.write_batch(deletes=items, prefix=TRIGGERED_APPOINTMENTS_PREFIX)
        log.debug("removed {n} triggered flags", n=len(items))

    # -- locator maps -------------------------------------------------------------------

    def load_locator_map(self, locator: str) -> list[str] | None:
        """The uuids mapped to ``locator``, or None."""
        value = self._load_json(LOCATOR_MAP_PREFIX, locator, "load_locator_map")
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
            log.error("locator map {locator} is not a list of uuids", locator=locator)
            return None
        return value

    def create_append_locator_map(self, locator: str, uuid: str) -> bool:
        """Create ``[uuid]`` or append ``uuid`` once; True when the map was written."""
        if not isinstance(locator, str) or not isinstance(uuid, str):
            log.error("create_append_locator_map: locator and uuid must be str")
            return False
        with self._map_lock:
            current = self.load_locator_map(locator)
            if current is not None and uuid in current:
                log.info("uuid {uuid} already in the map of {locator}", uuid=uuid, locator=locator)
                return False
            new = [uuid] if current is None else [*current, uuid]
            try:
                self.create_entry(locator, json.dumps(new), LOCATOR_MAP_PREFIX)
            except UnicodeError:
                log.error("locator {locator!r} is not encodable", locator=locator)
                return False
        log.debug("locator map of {locator} now holds {n} uuids", locator=locator, n=len(new))
        return True

    def update_locator_map(self, locator: str, locator_map: list[str]) -> bool:
        """Replace the map by ``locator_map`` if it is a non-empty subset of it.

        Anything else (no map, an empty list, a uuid not in the map) logs an error and
        changes nothing.  True when the map was written.
        """
        if (
            not isinstance(locator, str)
            or not isinstance(locator_map, list)
            or not all(isinstance(u, str) for u in locator_map)
        ):
            log.error("update_locator_map: a str locator and a list of str uuids are needed")
            return False
        with self._map_lock:
            current = self.load_locator_map(locator)
            if current is None:
                log.error("update_locator_map: no map for {locator}", locator=locator)
                return False
            if not locator_map or not set(locator_map).issubset(current):
                log.error(
                    "update_locator_map: the new map of {locator} is empty or not a subset",
                    locator=locator,
                )
                return False
            new = list(dict.fromkeys(locator_map))
            self.create_entry(locator, json.dumps(new), LOCATOR_MAP_PREFIX)
        return True

    def delete_locator_map(self, locator: str) -> bool:
        """True when deleted or absent, False for a bad locator."""
        return self._delete(LOCATOR_MAP_PREFIX, locator, "delete locator map")

    # -- last known blocks --------------------------------------------------------------

    def get_last_known_block(self, key: str | bytes) -> str | None:
        """The hash stored under ``key`` (``bw`` or ``br``), or None."""
        k = _as_str_prefix(key)
        if k is None:
            return None
        try:
            raw = self.load_entry(k)
        except UnicodeError:
            return None
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def load_last_block_hash_watcher(self) -> str | None:
        """The last block hash the watcher knew, or None."""
        return self.get_last_known_block(WATCHER_LAST_BLOCK_KEY)

    def load_last_block_hash_responder(self) -> str | None:
        """The last block hash the responder knew, or None."""
        return self.get_last_known_block(RESPONDER_LAST_BLOCK_KEY)

    def _store_block(self, key: str, block_hash: object) -> bool:
        if not isinstance(block_hash, str):
            log.error("block hash must be a str, not {t}", t=type(block_hash).__name__)
            return False
        try:
            self.create_entry(key, block_hash)
        except UnicodeError:
            return False
        return True

    def store_last_block_hash_watcher(self, block_hash: str) -> bool:
        """Store the watcher's last block: True when stored, False for bad input."""
        return self._store_block(WATCHER_LAST_BLOCK_KEY, block_hash)

    def store_last_block_hash_responder(self, block_hash: str) -> bool:
        """Store the responder's last block: True when stored, False for bad input."""
        return self._store_block(RESPONDER_LAST_BLOCK_KEY, block_hash)

    # -- Deferred API -------------------------------------------------------------------

    d_load_appointments_db = deferred_twin(load_appointments_db)
    d_load_watcher_appointments = deferred_twin(load_watcher_appointments)
    d_load_responder_trackers = deferred_twin(load_responder_trackers)
    d_load_all_triggered_flags = deferred_twin(load_all_triggered_flags)
    d_store_watcher_appointment = deferred_twin(store_watcher_appointment)
    d_store_responder_tracker = deferred_twin(store_responder_tracker)
    d_load_watcher_appointment = deferred_twin(load_watcher_appointment)
    d_load_responder_tracker = deferred_twin(load_responder_tracker)
    d_delete_watcher_appointment = deferred_twin(delete_watcher_appointment)
    d_delete_responder_tracker = deferred_twin(delete_responder_tracker)
    d_create_triggered_appointment_flag = deferred_twin(create_triggered_appointment_flag)
    d_delete_triggered_appointment_flag = deferred_twin(delete_triggered_appointment_flag)
    d_batch_delete_watcher_appointments = deferred_twin(batch_delete_watcher_appointments)
    d_batch_delete_responder_trackers = deferred_twin(batch_delete_responder_trackers)
    d_batch_create_triggered_appointment_flag = deferred_twin(
        batch_create_triggered_appointment_flag
    )
    d_batch_delete_triggered_appointment_flag = deferred_twin(
        batch_delete_triggered_appointment_flag
    )
    d_load_locator_map = deferred_twin(load_locator_map)
    d_create_append_locator_map = deferred_twin(create_append_locator_map)
    d_update_locator_map = deferred_twin(update_locator_map)
    d_delete_locator_map = deferred_twin(delete_locator_map)
    d_get_last_known_block = deferred_twin(get_last_known_block)
    d_load_last_block_hash_watcher = deferred_twin(load_last_block_hash_watcher)
    d_load_last_block_hash_responder = deferred_twin(load_last_block_hash_responder)
    d_store_last_block_hash_watcher = deferred_twin(store_last_block_hash_watcher)
    d_store_last_block_hash_responder = deferred_twin(store_last_block_hash_responder)


__all__ = [
    "AppointmentsDBM",
    "LOCATOR_MAP_PREFIX",
    "NAMESPACES",
    "RESPONDER_LAST_BLOCK_KEY",
    "RESPONDER_PREFIX",
    "TRIGGERED_APPOINTMENTS_PREFIX",
    "WATCHER_LAST_BLOCK_KEY",
    "WATCHER_PREFIX",
]
