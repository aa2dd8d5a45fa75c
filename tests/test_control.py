"""The control API: auth, every endpoint, bad requests (a real node on loopback)."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from p2pnet import control
from p2pnet.testing import control_request, start_node


def as_json(answer: tuple[int, str, bytes]) -> tuple[int, Any]:
    code, ctype, body = answer
    assert ctype == "application/json", (code, ctype, body)
    return code, json.loads(body)


class ControlTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.node = yield start_node(self)

    def req(self, method: str, path: str, body: bytes | None = None, **kw: Any
            ) -> defer.Deferred[tuple[int, str, bytes]]:
        return control_request(self.node, method, path, body, **kw)

    # -- the control file and auth -----------------------------------------------------

    def test_control_file(self) -> None:
        path = os.path.join(self.node.data_dir, "control.json")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        self.assertEqual(mode, 0o600)
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        self.assertEqual(info["pid"], os.getpid())
        self.assertEqual(info["node_id"], self.node.node_id.hex())
        self.assertRegex(info["url"], r"^http://127\.0\.0\.1:\d+/$")
        self.assertGreaterEqual(len(info["token"]), 32)
        self.assertEqual(info["url"], self.node.control.url)

    @defer.inlineCallbacks
    def test_control_file_removed_on_stop(self) -> Any:
        path = os.path.join(self.node.data_dir, "control.json")
        yield self.node.stopService()
        self.assertFalse(os.path.exists(path))

    @defer.inlineCallbacks
    def test_no_token_401(self) -> Any:
        for path in ("/status", "/peers", "/dht/k", "/sync", "/nowhere"):
            code, body = as_json((yield self.req("GET", path, token=None)))
            self.assertEqual(code, 401, path)
            self.assertEqual(body, {"error": "missing or wrong token"})

    @defer.inlineCallbacks
    def test_wrong_token_401(self) -> Any:
        for token in ("x", self.node.control.token[:-1], self.node.control.token + "x", ""):
            code, _ = as_json((yield self.req("GET", "/status", token=token)))
            self.assertEqual(code, 401, token)
        # a token in another scheme does not count
        code, _ = as_json((yield self.req(
            "GET", "/status", token=None,
            headers={b"authorization": [f"Basic {self.node.control.token}".encode()]})))
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_put_refused_without_token_changes_nothing(self) -> Any:
        code, _ = as_json((yield self.req("PUT", "/dht/k", b"v", token=None)))
        self.assertEqual(code, 401)
        self.assertEqual(self.node.dht.network.kvp_table.total_bytes, 0)

    # -- endpoints -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_status(self) -> Any:
        code, s = as_json((yield self.req("GET", "/status")))
        self.assertEqual(code, 200)
        self.assertEqual(s["node_id"], self.node.node_id.hex())
        self.assertEqual(s["addresses"]["dht"], f"127.0.0.1:{self.node.dht_address[1]}")
        self.assertEqual(s["addresses"]["control"], self.node.control.url)
        self.assertTrue(s["ready"])
        self.assertTrue(s["joined"])
        self.assertEqual(s["peers"], {"dht": 0, "mesh": 0})
        self.assertEqual(s["routing_table"], 0)
        self.assertEqual(s["values"]["records"], 0)
        self.assertGreaterEqual(s["uptime"], 0)
        self.assertEqual(s["pid"], os.getpid())
        for kind in ("malformed", "wrong_network"):
            self.assertEqual(s["counters"]["dropped"][kind], 0)
        self.assertEqual(s["counters"]["refused"], {})

    @defer.inlineCallbacks
    def test_status_counts_drops_and_refusals(self) -> Any:
        net = self.node.dht.network
        net.protocol.datagramReceived(b"\x00garbage", ("127.0.0.1", 9))
        net.refused["rate_limited"] += 2
        _, s = as_json((yield self.req("GET", "/status")))
        self.assertEqual(s["counters"]["dropped"]["malformed"], 1)
        self.assertEqual(s["counters"]["dropped_total"], 1)
        self.assertEqual(s["counters"]["refused"]["rate_limited"], 2)
        self.assertEqual(s["counters"]["refused_total"], 2)
        self.node.mesh.stats["malformed"] += 3
        _, s = as_json((yield self.req("GET", "/status")))
        self.assertEqual(s["counters"]["mesh"]["malformed"], 3)

    @defer.inlineCallbacks
    def test_peers(self) -> Any:
        other = yield start_node(self, bootstrap=[self.node.dht_address])
        yield other.dht.when_joined()
        code, p = as_json((yield self.req("GET", "/peers")))
        self.assertEqual(code, 200)
        self.assertEqual([c["id"] for c in p["dht"]], [other.node_id.hex()])
        self.assertEqual(p["dht"][0]["address"], f"127.0.0.1:{other.dht_address[1]}")
        self.assertIsInstance(p["mesh"], list)

    @defer.inlineCallbacks
    def test_dht_put_get(self) -> Any:
        value = bytes(range(256)) * 8
        code, r = as_json((yield self.req("PUT", "/dht/a%20key%2Fwith%20slash", value)))
        self.assertEqual(code, 200, r)
        self.assertEqual((r["key"], r["bytes"]), ("a key/with slash", len(value)))
        code, ctype, body = yield self.req("GET", "/dht/a%20key%2Fwith%20slash")
        self.assertEqual((code, ctype, body), (200, "application/octet-stream", value))
        # the same key reached from the library
        got = yield self.node.dht.network.get("a key/with slash")
        self.assertEqual(got, value)

    @defer.inlineCallbacks
    def test_dht_get_missing_404(self) -> Any:
        code, body = as_json((yield self.req("GET", "/dht/absent")))
        self.assertEqual((code, body), (404, {"error": "not found"}))

    @defer.inlineCallbacks
    def test_sync(self) -> Any:
        code, r = as_json((yield self.req("GET", "/sync")))
        self.assertEqual((code, r), (200, {"keys": []}))
        code, _ = as_json((yield self.req("PUT", "/sync/colour", b"blue")))
        self.assertEqual(code, 200)
        self.assertEqual(self.node.sync[b"colour"], b"blue")
        self.assertEqual((yield self.req("GET", "/sync/colour")),
                         (200, "application/octet-stream", b"blue"))
        self.assertEqual(as_json((yield self.req("GET", "/sync")))[1], {"keys": ["colour"]})
        code, r = as_json((yield self.req("DELETE", "/sync/colour")))
        self.assertEqual((code, r), (200, {"key": "colour", "deleted": True}))
        self.assertNotIn(b"colour", self.node.sync)
        self.assertEqual(as_json((yield self.req("GET", "/sync/colour")))[0], 404)
        self.assertEqual(as_json((yield self.req("DELETE", "/sync/colour")))[0], 404)

    @defer.inlineCallbacks
    def test_chord(self) -> Any:
        self.assertEqual(as_json((yield self.req("GET", "/chord")))[1], {"keys": []})
        code, r = as_json((yield self.req("PUT", "/chord/fruit", b"apple")))
        self.assertEqual(code, 200, r)
        self.assertEqual((yield self.req("GET", "/chord/fruit")),
                         (200, "application/octet-stream", b"apple"))
        self.assertEqual(as_json((yield self.req("GET", "/chord")))[1], {"keys": ["fruit"]})
        code, r = as_json((yield self.req("DELETE", "/chord/fruit")))
        self.assertEqual(code, 200, r)
        self.assertEqual(as_json((yield self.req("GET", "/chord/fruit")))[0], 404)
        self.assertEqual(as_json((yield self.req("GET", "/chord")))[1], {"keys": []})

    # -- bad requests ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_unknown_paths_404(self) -> Any:
        for path in ("/", "/nowhere", "/status/more", "/dht", "/sync/a/b"):
            code, body = as_json((yield self.req("GET", path)))
            self.assertEqual(code, 404, path)
            self.assertIsInstance(body["error"], str)
            self.assertNotIn("\n", body["error"])

    @defer.inlineCallbacks
    def test_wrong_methods_405(self) -> Any:
        for method, path in (("POST", "/status"), ("DELETE", "/peers"), ("PUT", "/sync"),
                             ("DELETE", "/dht/k"), ("PATCH", "/chord/k")):
            code, body = as_json((yield self.req(method, path, b"")))
            self.assertEqual(code, 405, (method, path))
            self.assertIn("not allowed", body["error"])

    @defer.inlineCallbacks
    def test_body_too_large_413(self) -> Any:
        big = b"x" * (control.MAX_BODY + 1)
        for path in ("/dht/k", "/sync/k", "/chord/k"):
            code, body = as_json((yield self.req("PUT", path, big)))
            self.assertEqual(code, 413, path)
            self.assertIn("over", body["error"])
        self.assertNotIn(b"k", self.node.sync)
        # a DHT value over 1 MiB is refused even when the body fits
        from p2pnet.models import MAX_VALUE_SIZE

        code, _ = as_json((yield self.req("PUT", "/dht/k", b"x" * (MAX_VALUE_SIZE + 1))))
        self.assertEqual(code, 413)

    @defer.inlineCallbacks
    def test_bad_keys_400(self) -> Any:
        code, body = as_json((yield self.req("GET", "/sync/" + "k" * (control.MAX_KEY + 1))))
        self.assertEqual(code, 400)
        self.assertIn("keys are", body["error"])
        code, body = as_json((yield self.req("PUT", "/dht/%FF%FE", b"v")))
        self.assertEqual(code, 400)
        self.assertIn("UTF-8", body["error"])

    @defer.inlineCallbacks
    def test_timeouts_504(self) -> Any:
        from p2pnet.chord.errors import ChordTimeoutError
        from p2pnet.dht.errors import LookupTimeoutError

        for error in (LookupTimeoutError("lookup ran past 5 s"),
                      ChordTimeoutError("no holder answered"), defer.TimeoutError()):
            self.patch(self.node.chord, "d_get",
                       lambda key, e=error: defer.fail(e))
            code, body = as_json((yield self.req("GET", "/chord/k")))
            self.assertEqual(code, 504, error)
            self.assertTrue(body["error"].startswith("timed out: "), body)

    @defer.inlineCallbacks
    def test_stopping_node_503(self) -> Any:
        self.node.running = False  # as between stopService and the control API's stop
        try:
            for area in ("sync", "chord"):
                code, body = as_json((yield self.req("GET", f"/{area}/k")))
                self.assertEqual(code, 503)
                self.assertIn("stopping", body["error"])
        finally:
            self.node.running = True


class WritePrivateTests(unittest.SynchronousTestCase):
    def test_mode_even_with_open_umask(self) -> None:
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        path = self.mktemp()
        control.write_private(path, b"secret")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"secret")
        control.write_private(path, b"again")  # replaces atomically
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"again")
