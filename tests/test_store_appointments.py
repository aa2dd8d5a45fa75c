"""Tests for :mod:`p2pnet.store.appointments` (teos's AppointmentsDBM), after teos's list."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid as uuidlib
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from twisted.internet import defer, reactor
from twisted.trial import unittest

from p2pnet.store.appointments import (
    LOCATOR_MAP_PREFIX,
    NAMESPACES,
    RESPONDER_LAST_BLOCK_KEY,
    RESPONDER_PREFIX,
    TRIGGERED_APPOINTMENTS_PREFIX,
    WATCHER_LAST_BLOCK_KEY,
    WATCHER_PREFIX,
    AppointmentsDBM,
)
from p2pnet.store.pool import StoreExecutor


def new_uuid() -> str:
    return uuidlib.uuid4().hex


def appointment(i: int = 0) -> dict[str, Any]:
    return {"locator": f"{i:032x}", "to_self_delay": 20 + i, "encrypted_blob": "ab" * (i + 1)}


def block_hash() -> str:
    return uuidlib.uuid4().hex + uuidlib.uuid4().hex


class AppointmentsDBMTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.db = AppointmentsDBM(self.path)
        self.addCleanup(self.db.close)

    # -- construction ---------------------------------------------------------------------

    def test_prefixes(self) -> None:
        self.assertEqual(
            (
                WATCHER_PREFIX,
                RESPONDER_PREFIX,
                WATCHER_LAST_BLOCK_KEY,
                RESPONDER_LAST_BLOCK_KEY,
                LOCATOR_MAP_PREFIX,
                TRIGGERED_APPOINTMENTS_PREFIX,
            ),
            ("w", "r", "bw", "br", "m", "ta"),
        )

    def test_init_wrong_path(self) -> None:
        for bad in (None, 42, b"path"):
            self.assertRaises(ValueError, AppointmentsDBM, bad)

    # -- load_appointments_db and the scans ----------------------------------------------

    def test_load_appointments_db(self) -> None:
        self.assertEqual(self.db.load_appointments_db(WATCHER_PREFIX), {})
        self.assertEqual(self.db.load_appointments_db(RESPONDER_PREFIX), {})
        local = {new_uuid(): appointment(i) for i in range(10)}
        for uuid, app in local.items():
            self.db.create_entry(uuid, json.dumps(app), prefix=WATCHER_PREFIX)
        self.assertEqual(self.db.load_appointments_db(WATCHER_PREFIX), local)
        self.assertEqual(self.db.load_appointments_db(WATCHER_PREFIX.encode()), local)
        self.assertEqual(self.db.load_appointments_db(RESPONDER_PREFIX), {})

    def test_scans_stay_in_their_namespace(self) -> None:
        db = self.db
        u = new_uuid()
        db.store_watcher_appointment(u, appointment(1))
        db.store_responder_tracker(u, appointment(2))
        db.create_triggered_appointment_flag(u)
        db.create_append_locator_map("w" + u, u)
        db.store_last_block_hash_watcher(block_hash())
        db.store_last_block_hash_responder(block_hash())
        self.assertEqual(db.load_appointments_db("w"), {u: appointment(1)})
        self.assertEqual(db.load_appointments_db("r"), {u: appointment(2)})
        self.assertEqual(db.load_all_triggered_flags(), [u])
        # "bw"/"br" are whole keys: no scan of "b" sees them; "ta" hides under no "t" scan
        self.assertEqual(db.load_appointments_db("b"), {})
        self.assertEqual(db.load_appointments_db(b"b"), {})
        self.assertEqual(db.load_appointments_db("t"), {})
        self.assertEqual(list(db._scan("b")), [])
        self.assertEqual(list(db._scan("t")), [])
        self.assertEqual([k for k, _ in db._scan("m")], ["w" + u])
        # the raw prefix scan does see them: the filtering is the DBM's
        self.assertEqual(sorted(k for k, _ in db.iter_prefix("b")), ["r", "w"])

    def test_scan_of_empty_prefix_skips_every_namespace(self) -> None:
        db = self.db
        for ns in NAMESPACES:
            db.create_entry("x", "{}", prefix=ns)
        db.create_entry("other", "{}")
        self.assertEqual(db.load_appointments_db(""), {"other": {}})

    def test_load_appointments_db_bad_prefix(self) -> None:
        self.assertEqual(self.db.load_appointments_db(42), {})  # type: ignore[arg-type]

    def test_undecodable_entries_skipped(self) -> None:
        db = self.db
        good = new_uuid()
        db.store_watcher_appointment(good, appointment())
        db.create_entry("notjson", "{{{", prefix=WATCHER_PREFIX)
        db.create_entry("list", "[1, 2]", prefix=WATCHER_PREFIX)
        db.raw.put(b"wbadutf8", b"\xff\xfe")
        self.assertEqual(db.load_watcher_appointments(), {good: appointment()})
        self.assertIsNone(db.load_watcher_appointment("notjson"))
        self.assertIsNone(db.load_watcher_appointment("list"))
        self.assertIsNone(db.load_watcher_appointment("badutf8"))

    # -- last known blocks ----------------------------------------------------------------

    def test_get_last_known_block(self) -> None:
        for key in (WATCHER_LAST_BLOCK_KEY, RESPONDER_LAST_BLOCK_KEY):
            self.assertIsNone(self.db.get_last_known_block(key))
            h = block_hash()
            self.db.create_entry(key, h)
            self.assertEqual(self.db.get_last_known_block(key), h)
            self.assertEqual(self.db.get_last_known_block(key.encode()), h)
        self.assertIsNone(self.db.get_last_known_block(42))  # type: ignore[arg-type]

    def test_store_load_last_block_hash_watcher(self) -> None:
        self.assertIsNone(self.db.load_last_block_hash_watcher())
        h = block_hash()
        self.assertTrue(self.db.store_last_block_hash_watcher(h))
        self.assertEqual(self.db.load_last_block_hash_watcher(), h)
        self.assertIsNone(self.db.load_last_block_hash_responder())
        h2 = block_hash()
        self.assertTrue(self.db.store_last_block_hash_watcher(h2))
        self.assertEqual(self.db.load_last_block_hash_watcher(), h2)

    def test_store_load_last_block_hash_responder(self) -> None:
        self.assertIsNone(self.db.load_last_block_hash_responder())
        h = block_hash()
        self.assertTrue(self.db.store_last_block_hash_responder(h))
        self.assertEqual(self.db.load_last_block_hash_responder(), h)
        self.assertIsNone(self.db.load_last_block_hash_watcher())

    def test_store_last_block_hash_wrong(self) -> None:
        for bad in (42, None, b"00" * 32, {"h": 1}):
            self.assertIs(self.db.store_last_block_hash_watcher(bad), False)  # type: ignore[arg-type]
            self.assertIs(self.db.store_last_block_hash_responder(bad), False)  # type: ignore[arg-type]
        self.assertIsNone(self.db.load_last_block_hash_watcher())
        self.assertIsNone(self.db.load_last_block_hash_responder())

    # -- watcher appointments -------------------------------------------------------------

    def test_load_watcher_appointments_empty(self) -> None:
        self.assertEqual(self.db.load_watcher_appointments(), {})
        self.assertEqual(self.db.load_watcher_appointments(include_triggered=True), {})

    def test_load_watcher_appointments_no_triggered(self) -> None:
        local = {new_uuid(): appointment(i) for i in range(10)}
        for uuid, app in local.items():
            self.assertIs(self.db.store_watcher_appointment(uuid, app), True)
        self.assertEqual(self.db.load_watcher_appointments(), local)
        self.assertEqual(self.db.load_watcher_appointments(include_triggered=True), local)

    def test_load_watcher_appointments_triggered(self) -> None:
        local = {new_uuid(): appointment(i) for i in range(10)}
        triggered = sorted(local)[:4]
        for uuid, app in local.items():
            self.db.store_watcher_appointment(uuid, app)
        for uuid in triggered:
            self.db.create_triggered_appointment_flag(uuid)
        expected = {u: a for u, a in local.items() if u not in triggered}
        self.assertEqual(self.db.load_watcher_appointments(), expected)
        self.assertEqual(self.db.load_watcher_appointments(include_triggered=True), local)

    def test_store_load_watcher_appointment(self) -> None:
        uuid = new_uuid()
        self.assertIsNone(self.db.load_watcher_appointment(uuid))
        self.assertIs(self.db.store_watcher_appointment(uuid, appointment(3)), True)
        self.assertEqual(self.db.load_watcher_appointment(uuid), appointment(3))
        self.assertEqual(
            self.db.load_entry(uuid, WATCHER_PREFIX), json.dumps(appointment(3)).encode()
        )
        self.assertIsNone(self.db.load_responder_tracker(uuid))

    def test_store_watcher_appointment_wrong(self) -> None:
        uuid = new_uuid()
        for bad in ("not a dict", 42, None, [1], {"x": object()}, {"x": float("nan")}):
            self.assertIs(self.db.store_watcher_appointment(uuid, bad), False)  # type: ignore[arg-type]
            self.assertIs(self.db.store_responder_tracker(uuid, bad), False)  # type: ignore[arg-type]
        self.assertEqual(self.db.scan_prefix(""), [])

    def test_store_load_delete_wrong_uuid(self) -> None:
        """A non-str uuid: store/delete give False, load gives None, nothing raises."""
        db = self.db
        for bad in (42, None, b"uuid", 4.2, ("t",), "\ud800"):
            self.assertIs(db.store_watcher_appointment(bad, appointment()), False)  # type: ignore[arg-type]
            self.assertIs(db.store_responder_tracker(bad, appointment()), False)  # type: ignore[arg-type]
            self.assertIsNone(db.load_watcher_appointment(bad))  # type: ignore[arg-type]
            self.assertIsNone(db.load_responder_tracker(bad))  # type: ignore[arg-type]
            self.assertIs(db.delete_watcher_appointment(bad), False)  # type: ignore[arg-type]
            self.assertIs(db.delete_responder_tracker(bad), False)  # type: ignore[arg-type]
            self.assertIs(db.create_triggered_appointment_flag(bad), False)  # type: ignore[arg-type]
            self.assertIs(db.delete_triggered_appointment_flag(bad), False)  # type: ignore[arg-type]
            self.assertIs(db.delete_locator_map(bad), False)  # type: ignore[arg-type]
            self.assertIsNone(db.load_locator_map(bad))  # type: ignore[arg-type]
            self.assertIs(db.create_append_locator_map(bad, "u"), False)  # type: ignore[arg-type]
            if not isinstance(bad, str):  # a str uuid is JSON text inside a map: fine
                self.assertIs(db.create_append_locator_map("l", bad), False)  # type: ignore[arg-type]
        self.assertEqual(db.scan_prefix(""), [])

    def test_delete_watcher_appointment(self) -> None:
        local = {new_uuid(): appointment(i) for i in range(5)}
        for uuid, app in local.items():
            self.db.store_watcher_appointment(uuid, app)
        for uuid in list(local):
            self.assertIs(self.db.delete_watcher_appointment(uuid), True)
            del local[uuid]
            self.assertEqual(self.db.load_watcher_appointments(), local)
        self.assertIs(self.db.delete_watcher_appointment(new_uuid()), True)  # absent

    def test_batch_delete_watcher_appointments(self) -> None:
        local = {new_uuid(): appointment(i) for i in range(10)}
        for uuid, app in local.items():
            self.db.store_watcher_appointment(uuid, app)
        self.db.store_responder_tracker(next(iter(local)), appointment(9))
        gone = list(local)[:6]
        self.assertIsNone(self.db.batch_delete_watcher_appointments(gone))
        self.assertEqual(
            self.db.load_watcher_appointments(), {u: a for u, a in local.items() if u not in gone}
        )
        # the tracker under the same uuid is another namespace
        self.assertEqual(len(self.db.load_responder_trackers()), 1)
        self.db.batch_delete_watcher_appointments([])
        self.db.batch_delete_watcher_appointments(iter(list(local)[6:]))
        self.assertEqual(self.db.load_watcher_appointments(), {})

    def test_batch_is_all_or_nothing(self) -> None:
        uuids = [new_uuid() for _ in range(3)]
        for u in uuids:
            self.db.store_watcher_appointment(u, appointment())
        self.assertRaises(TypeError, self.db.batch_delete_watcher_appointments, [uuids[0], 42])
        self.assertRaises(TypeError, self.db.batch_delete_watcher_appointments, uuids[0])
        self.assertRaises(
            TypeError, self.db.batch_create_triggered_appointment_flag, [uuids[0], None]
        )
        self.assertEqual(len(self.db.load_watcher_appointments()), 3)
        self.assertEqual(self.db.load_all_triggered_flags(), [])

    # -- responder trackers ---------------------------------------------------------------

    def test_store_load_responder_tracker(self) -> None:
        uuid = new_uuid()
        self.assertIsNone(self.db.load_responder_tracker(uuid))
        self.assertIs(self.db.store_responder_tracker(uuid, appointment(4)), True)
        self.assertEqual(self.db.load_responder_tracker(uuid), appointment(4))
        self.assertIsNone(self.db.load_watcher_appointment(uuid))
        self.assertEqual(self.db.load_responder_trackers(), {uuid: appointment(4)})

    def test_delete_responder_tracker(self) -> None:
        local = {new_uuid(): appointment(i) for i in range(5)}
        for uuid, app in local.items():
            self.db.store_responder_tracker(uuid, app)
        for uuid in list(local):
            self.assertIs(self.db.delete_responder_tracker(uuid), True)
            del local[uuid]
            self.assertEqual(self.db.load_responder_trackers(), local)
        self.assertIs(self.db.delete_responder_tracker(new_uuid()), True)

    def test_batch_delete_responder_trackers(self) -> None:
        local = {new_uuid(): appointment(i) for i in range(10)}
        for uuid, app in local.items():
            self.db.store_responder_tracker(uuid, app)
        gone = list(local)[::2]
        self.assertIsNone(self.db.batch_delete_responder_trackers(gone))
        self.assertEqual(
            self.db.load_responder_trackers(), {u: a for u, a in local.items() if u not in gone}
        )

    # -- triggered flags ------------------------------------------------------------------

    def test_create_triggered_appointment_flag(self) -> None:
        uuid = new_uuid()
        self.assertIs(self.db.create_triggered_appointment_flag(uuid), True)
        self.assertEqual(self.db.load_entry(uuid, TRIGGERED_APPOINTMENTS_PREFIX), b"")
        self.assertIsNone(self.db.load_entry(new_uuid(), TRIGGERED_APPOINTMENTS_PREFIX))

    def test_batch_create_triggered_appointment_flag(self) -> None:
        uuids = [new_uuid() for _ in range(10)]
        self.db.create_triggered_appointment_flag(uuids[0])
        self.assertIsNone(self.db.batch_create_triggered_appointment_flag(uuids[5:]))
        self.assertEqual(sorted(self.db.load_all_triggered_flags()), sorted([uuids[0], *uuids[5:]]))

    def test_load_all_triggered_flags(self) -> None:
        self.assertEqual(self.db.load_all_triggered_flags(), [])
        uuids = [new_uuid() for _ in range(10)]
        for u in uuids:
            self.db.create_triggered_appointment_flag(u)
        self.db.store_watcher_appointment(new_uuid(), appointment())
        self.assertEqual(sorted(self.db.load_all_triggered_flags()), sorted(uuids))

    def test_delete_triggered_appointment_flag(self) -> None:
        uuids = [new_uuid() for _ in range(5)]
        for u in uuids:
            self.db.create_triggered_appointment_flag(u)
        for i, u in enumerate(uuids):
            self.assertIs(self.db.delete_triggered_appointment_flag(u), True)
            self.assertEqual(sorted(self.db.load_all_triggered_flags()), sorted(uuids[i + 1 :]))
        self.assertIs(self.db.delete_triggered_appointment_flag(new_uuid()), True)

    def test_batch_delete_triggered_appointment_flag(self) -> None:
        uuids = [new_uuid() for _ in range(10)]
        self.db.batch_create_triggered_appointment_flag(uuids)
        self.assertIsNone(self.db.batch_delete_triggered_appointment_flag(uuids[:7]))
        self.assertEqual(sorted(self.db.load_all_triggered_flags()), sorted(uuids[7:]))

    # -- locator maps ---------------------------------------------------------------------

    def test_create_append_locator_map(self) -> None:
        locator, u1, u2 = new_uuid(), new_uuid(), new_uuid()
        self.assertIsNone(self.db.load_locator_map(locator))
        self.assertIs(self.db.create_append_locator_map(locator, u1), True)
        self.assertEqual(self.db.load_locator_map(locator), [u1])
        self.assertIs(self.db.create_append_locator_map(locator, u2), True)
        self.assertEqual(self.db.load_locator_map(locator), [u1, u2])
        # a repeat changes nothing
        self.assertIs(self.db.create_append_locator_map(locator, u1), False)
        self.assertEqual(self.db.load_locator_map(locator), [u1, u2])
        self.assertEqual(
            self.db.load_entry(locator, LOCATOR_MAP_PREFIX), json.dumps([u1, u2]).encode()
        )

    def test_update_locator_map(self) -> None:
        locator = new_uuid()
        uuids = [new_uuid() for _ in range(5)]
        for u in uuids:
            self.db.create_append_locator_map(locator, u)
        self.assertIs(self.db.update_locator_map(locator, uuids[1:3]), True)
        self.assertEqual(self.db.load_locator_map(locator), uuids[1:3])

    def test_update_locator_map_wrong_data(self) -> None:
        locator = new_uuid()
        uuids = [new_uuid() for _ in range(3)]
        # no map yet: nothing changes (upstream crashes here)
        self.assertIs(self.db.update_locator_map(locator, uuids), False)
        self.assertIsNone(self.db.load_locator_map(locator))
        for u in uuids:
            self.db.create_append_locator_map(locator, u)
        for bad in ([], [new_uuid()], [*uuids, new_uuid()], "notalist", [uuids[0], 3]):
            self.assertIs(self.db.update_locator_map(locator, bad), False)  # type: ignore[arg-type]
            self.assertEqual(self.db.load_locator_map(locator), uuids)
        self.assertIs(self.db.update_locator_map(42, uuids), False)  # type: ignore[arg-type]

    def test_corrupt_locator_map(self) -> None:
        self.db.create_entry("loc", '{"not": "a list"}', prefix=LOCATOR_MAP_PREFIX)
        self.assertIsNone(self.db.load_locator_map("loc"))
        self.db.create_entry("loc", "[1, 2]", prefix=LOCATOR_MAP_PREFIX)
        self.assertIsNone(self.db.load_locator_map("loc"))

    def test_delete_locator_map(self) -> None:
        locators = [new_uuid() for _ in range(4)]
        for loc in locators:
            self.db.create_append_locator_map(loc, new_uuid())
        for loc in locators:
            self.assertIs(self.db.delete_locator_map(loc), True)
            self.assertIsNone(self.db.load_locator_map(loc))
        self.assertIs(self.db.delete_locator_map(new_uuid()), True)

    def test_persists_across_reopen(self) -> None:
        u = new_uuid()
        self.db.store_watcher_appointment(u, appointment())
        self.db.create_triggered_appointment_flag(u)
        self.db.create_append_locator_map("loc", u)
        self.db.store_last_block_hash_watcher("h")
        self.db.close()
        db = AppointmentsDBM(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.load_watcher_appointments(include_triggered=True), {u: appointment()})
        self.assertEqual(db.load_all_triggered_flags(), [u])
        self.assertEqual(db.load_locator_map("loc"), [u])
        self.assertEqual(db.load_last_block_hash_watcher(), "h")


class InlineDeferredTwinsTests(unittest.SynchronousTestCase):
    """Every public method has a ``d_`` twin with the same result."""

    def test_every_method_has_a_twin(self) -> None:
        names = [
            n
            for n, v in vars(AppointmentsDBM).items()
            if callable(v) and not n.startswith(("_", "d_"))
        ]
        self.assertGreaterEqual(len(names), 25)
        for n in names:
            self.assertIn(f"d_{n}", vars(AppointmentsDBM), n)

    def test_twins(self) -> None:
        db = AppointmentsDBM(self.mktemp(), executor=StoreExecutor.inline())
        self.addCleanup(db.close)
        u = new_uuid()
        self.assertIs(self.successResultOf(db.d_store_watcher_appointment(u, appointment())), True)
        self.assertIs(self.successResultOf(db.d_store_watcher_appointment(42, {})), False)  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(db.d_load_watcher_appointment(u)), appointment())
        self.successResultOf(db.d_batch_create_triggered_appointment_flag([u]))
        self.assertEqual(self.successResultOf(db.d_load_watcher_appointments()), {})
        self.assertEqual(self.successResultOf(db.d_load_all_triggered_flags()), [u])
        self.failureResultOf(db.d_batch_delete_watcher_appointments([1]), TypeError)  # type: ignore[list-item]
        self.assertIs(self.successResultOf(db.d_create_append_locator_map("l", u)), True)
        self.assertEqual(self.successResultOf(db.d_load_locator_map("l")), [u])


class ThreadedTwinsTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_many_appointments_in_flight(self) -> Any:
        db = AppointmentsDBM(self.mktemp(), reactor=reactor)
        db.start()

        def cleanup() -> defer.Deferred[None]:
            return db.stop().addCallback(lambda _: db.close())

        self.addCleanup(cleanup)
        local = {new_uuid(): appointment(i) for i in range(200)}
        stored = yield defer.gatherResults(
            [db.d_store_watcher_appointment(u, a) for u, a in local.items()]
        )
        self.assertEqual(stored, [True] * 200)
        appends = [db.d_create_append_locator_map("loc", u) for u in local]
        appends.append(db.d_create_append_locator_map("loc", next(iter(local))))
        results = yield defer.gatherResults(appends)
        self.assertEqual(results, [True] * 200 + [False])
        loaded = yield db.d_load_watcher_appointments()
        self.assertEqual(loaded, local)
        self.assertEqual((yield db.d_load_locator_map("loc")), list(local))
        self.assertLess(db.executor.hops, 10)


# -- hypothesis: the prefixes against a plain dict model ----------------------------------

# A small alphabet full of prefix letters, so uuids and locators collide with prefixes.
names = st.text(alphabet="wrbtam0", max_size=3)
values = st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=3)


class AppointmentsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="p2pnet-dbm-")
        self.db = AppointmentsDBM(self.dir + "/db")
        self.watcher: dict[str, dict[str, Any]] = {}
        self.responder: dict[str, dict[str, Any]] = {}
        self.triggered: set[str] = set()
        self.maps: dict[str, list[str]] = {}
        self.blocks: dict[str, str] = {}

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(uuid=names, value=values)
    def store_appointment(self, uuid: str, value: dict[str, Any]) -> None:
        assert self.db.store_watcher_appointment(uuid, value) is True
        self.watcher[uuid] = value

    @rule(uuid=names, value=values)
    def store_tracker(self, uuid: str, value: dict[str, Any]) -> None:
        assert self.db.store_responder_tracker(uuid, value) is True
        self.responder[uuid] = value

    @rule(uuid=names)
    def delete_appointment(self, uuid: str) -> None:
        assert self.db.delete_watcher_appointment(uuid) is True
        self.watcher.pop(uuid, None)

    @rule(uuid=names)
    def delete_tracker(self, uuid: str) -> None:
        assert self.db.delete_responder_tracker(uuid) is True
        self.responder.pop(uuid, None)

    @rule(uuids=st.lists(names, max_size=4))
    def batch_delete_appointments(self, uuids: list[str]) -> None:
        self.db.batch_delete_watcher_appointments(uuids)
        for u in uuids:
            self.watcher.pop(u, None)

    @rule(uuids=st.lists(names, max_size=4))
    def batch_delete_trackers(self, uuids: list[str]) -> None:
        self.db.batch_delete_responder_trackers(uuids)
        for u in uuids:
            self.responder.pop(u, None)

    @rule(uuid=names)
    def flag(self, uuid: str) -> None:
        assert self.db.create_triggered_appointment_flag(uuid) is True
        self.triggered.add(uuid)

    @rule(uuid=names)
    def unflag(self, uuid: str) -> None:
        assert self.db.delete_triggered_appointment_flag(uuid) is True
        self.triggered.discard(uuid)

    @rule(uuids=st.lists(names, max_size=4))
    def batch_flag(self, uuids: list[str]) -> None:
        self.db.batch_create_triggered_appointment_flag(uuids)
        self.triggered.update(uuids)

    @rule(uuids=st.lists(names, max_size=4))
    def batch_unflag(self, uuids: list[str]) -> None:
        self.db.batch_delete_triggered_appointment_flag(uuids)
        self.triggered.difference_update(uuids)

    @rule(locator=names, uuid=names)
    def append_map(self, locator: str, uuid: str) -> None:
        current = self.maps.get(locator)
        expected = current is None or uuid not in current
        assert self.db.create_append_locator_map(locator, uuid) is expected
        if expected:
            self.maps[locator] = [*(current or []), uuid]

    @rule(locator=names, data=st.data())
    def update_map(self, locator: str, data: st.DataObject) -> None:
        current = self.maps.get(locator, [])
        new = data.draw(st.lists(st.sampled_from([*current, "zz"]), max_size=3, unique=True))
        ok = locator in self.maps and bool(new) and set(new) <= set(current)
        assert self.db.update_locator_map(locator, new) is ok
        if ok:
            self.maps[locator] = new

    @rule(locator=names)
    def delete_map(self, locator: str) -> None:
        assert self.db.delete_locator_map(locator) is True
        self.maps.pop(locator, None)

    @rule(watcher=st.booleans(), value=st.text(alphabet="0123456789abcdef", max_size=8))
    def store_block(self, watcher: bool, value: str) -> None:
        if watcher:
            assert self.db.store_last_block_hash_watcher(value) is True
            self.blocks["bw"] = value
        else:
            assert self.db.store_last_block_hash_responder(value) is True
            self.blocks["br"] = value

    @invariant()
    def matches_model(self) -> None:
        db = self.db
        assert db.load_watcher_appointments(include_triggered=True) == self.watcher
        untriggered = {u: a for u, a in self.watcher.items() if u not in self.triggered}
        assert db.load_watcher_appointments() == untriggered
        assert db.load_responder_trackers() == self.responder
        assert sorted(db.load_all_triggered_flags()) == sorted(self.triggered)
        for locator, uuids in self.maps.items():
            assert db.load_locator_map(locator) == uuids
        assert sorted(k for k, _ in db._scan(LOCATOR_MAP_PREFIX)) == sorted(self.maps)
        assert db.load_last_block_hash_watcher() == self.blocks.get("bw")
        assert db.load_last_block_hash_responder() == self.blocks.get("br")
        assert db.load_appointments_db("b") == {}
        assert db.load_appointments_db("t") == {}
        # every scan's keys, whatever the values: exactly its own namespace
        scanned = {
            p: sorted(k for k, _ in db._scan(p)) for p in ("w", "r", "ta", "m", "b", "t", "")
        }
        assert scanned == {
            "w": sorted(self.watcher),
            "r": sorted(self.responder),
            "ta": sorted(self.triggered),
            "m": sorted(self.maps),
            "b": [],
            "t": [],
            "": [],
        }


class AppointmentsMachineTests(unittest.SynchronousTestCase):
    def test_prefixes_against_a_dict_model(self) -> None:
        run_state_machine_as_test(
            AppointmentsMachine, settings=settings(max_examples=50, stateful_step_count=30)
        )
