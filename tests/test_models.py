"""Tests for :mod:`p2pnet.models`: nodes, node lists and the JSON documents of the DHT.

The first classes follow bytestag's ``models_test``; the rest check validation, the byte
round trips and the totality of the decoders (only ``TypeError``/``ValueError``).
"""

from __future__ import annotations

import base64
import gc
import json
import math
import weakref
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids
from p2pnet.models import (
    MAX_HOST_BYTES,
    MAX_VALUE_SIZE,
    CollectionInfo,
    FileInfo,
    KVPExchangeInfo,
    KVPExchangeInfoList,
    Node,
    NodeList,
    Serializable,
)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


KEY_A = bytes(range(20))
KEY_B = bytes(range(20, 40))
KEY_C = b"\xff" * 20


# -- strategies building valid models ------------------------------------------------------

keys = st.binary(min_size=20, max_size=20)
hosts = st.text(min_size=1, max_size=40)
ports = st.integers(min_value=1, max_value=65535)
nodes = st.builds(Node, keys, hosts, ports)
node_lists = st.lists(nodes, max_size=8).map(NodeList)
timestamps = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
kvp_infos = st.builds(
    KVPExchangeInfo, keys, keys, st.integers(min_value=0, max_value=MAX_VALUE_SIZE), timestamps
)
kvp_info_lists = st.lists(kvp_infos, max_size=6).map(KVPExchangeInfoList)
file_infos = st.builds(
    FileInfo,
    keys,
    st.lists(keys, min_size=1, max_size=5).map(tuple),
    st.none() | st.integers(min_value=0, max_value=2**70),
    st.none() | st.lists(st.text(max_size=12), min_size=1, max_size=4).map(tuple),
)
collection_infos = st.builds(
    CollectionInfo,
    st.lists(file_infos, min_size=1, max_size=3).map(tuple),
    st.none() | st.text(max_size=30),
    st.none() | st.integers(min_value=0, max_value=2**70),
)

# -- strategies building arbitrary (mostly invalid) JSON-like values -----------------------

EDGE_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1,
    65535,
    65536,
    MAX_VALUE_SIZE,
    MAX_VALUE_SIZE + 1,
    2**63,
    10**400,
    -(10**400),
    0.0,
    -0.0,
    1.5,
    -1.5,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    "",
    "\ud800",
    "BytestagFileInfo",
    "BytestagCollectionInfo",
    b64(b""),
    b64(b"x" * 19),
    b64(b"x" * 21),
    b64(KEY_A),
    b64(KEY_A)[:-1],
    "!!!!",
    "é",
    [],
    {},
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(EDGE_VALUES),
    keys.map(b64),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
# values that are often nearly right for a field
near = st.one_of(
    json_values,
    st.sampled_from(EDGE_VALUES),
    keys.map(b64),
    st.lists(keys.map(b64), max_size=3),
    st.lists(st.text(max_size=5), max_size=3),
    ports,
    timestamps,
)


def keyed(names: list[str], value: st.SearchStrategy[Any] = near) -> st.SearchStrategy[dict]:
    """Dicts with (some of) the right key names, random values and maybe extra keys."""
    return st.builds(
        lambda d, extra: {**extra, **d},
        st.fixed_dictionaries({}, optional={name: value for name in names}),
        st.dictionaries(st.text(max_size=4), json_values, max_size=2),
    )


node_entries = keyed(["host", "port", "id"])
kvp_entries = keyed(["key", "index", "size", "time"])
file_entries = keyed(["!", "hash", "parts", "size", "filename"])
collection_entries = keyed(
    ["!", "files", "comment", "timestamp"],
    st.one_of(
        near,
        st.lists(
            st.one_of(file_entries, file_infos.map(lambda f: f.to_json_dumpable())), max_size=3
        ),
    ),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a JSON document, the root first."""
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, models: st.SearchStrategy[Serializable]) -> Any:
    """A valid model's JSON form with one or two positions replaced or deleted."""
    doc = json.loads(json.dumps(draw(models).to_json_dumpable()))
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            return draw(near)
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(near)
    return doc


# (class, expected top-level container, strategy of tricky values of that container)
MODELS: list[tuple[type[Serializable], type, st.SearchStrategy[Any]]] = [
    (
        NodeList,
        list,
        st.lists(st.one_of(node_entries, json_values), max_size=4)
        | mutated(node_lists.filter(bool)),
    ),
    (KVPExchangeInfo, dict, kvp_entries | mutated(kvp_infos)),
    (
        KVPExchangeInfoList,
        list,
        st.lists(st.one_of(kvp_entries, json_values), max_size=4)
        | mutated(kvp_info_lists.filter(bool)),
    ),
    (FileInfo, dict, file_entries | mutated(file_infos)),
    (CollectionInfo, dict, collection_entries | mutated(collection_infos)),
]
CONTAINERS = {cls: container for cls, container, _strategy in MODELS}
model_classes = st.sampled_from([m[0] for m in MODELS])


_DELETE = object()


class ModelsJSONTestMixin:
    assertIsInstance: Any
    assertEqual: Any
    assertIn: Any
    fail: Any

    def assertTotal(self, cls: type[Serializable], value: object) -> None:
        """``cls.from_json_loadable(value)`` succeeds or raises TypeError/ValueError only."""
        container = CONTAINERS[cls]
        try:
            result = cls.from_json_loadable(value)
        except TypeError:
            if isinstance(value, container):
                self.fail(f"TypeError for a {container.__name__}: {value!r}")
            return
        except ValueError:
            if not isinstance(value, container):
                self.fail(f"ValueError for a non-{container.__name__}: {value!r}")
            return
        except Exception as e:  # pragma: no cover - the property under test
            self.fail(f"{cls.__name__}.from_json_loadable raised {e!r} for {value!r}")
        self.assertIsInstance(result, cls)
        # whatever is accepted is a valid model: it encodes and decodes to itself
        self.assertEqual(cls.from_bytes(result.to_bytes()), result)


# -- bytestag's models_test ---------------------------------------------------------------


class TestCollectionInfo(SynchronousTestCase):
    def test_read_json(self) -> None:
        """It should read in json with basic info."""
        doc = {
            "!": "BytestagCollectionInfo",
            "files": [
                {"!": "BytestagFileInfo", "hash": b64(KEY_A), "parts": [b64(KEY_B)]},
                {
                    "hash": b64(KEY_B),
                    "parts": [b64(KEY_B), b64(KEY_C)],
                    "size": 3,
                    "filename": ["dir", "f.txt"],
                },
            ],
            "comment": "my files",
            "timestamp": 1234,
        }
        info = CollectionInfo.from_bytes(json.dumps(doc).encode())
        self.assertEqual(len(info.file_infos), 2)
        self.assertEqual(info.file_infos[0], FileInfo(KEY_A, (KEY_B,)))
        self.assertEqual(info.file_infos[1], FileInfo(KEY_B, (KEY_B, KEY_C), 3, ("dir", "f.txt")))
        self.assertEqual(info.comment, "my files")
        self.assertEqual(info.timestamp, 1234)

    def test_read_json_minimal(self) -> None:
        doc = {"files": [{"hash": b64(KEY_A), "parts": [b64(KEY_A)]}]}
        info = CollectionInfo.from_json_loadable(doc)
        self.assertEqual(info, CollectionInfo((FileInfo(KEY_A, (KEY_A,)),)))
        self.assertIsNone(info.comment)
        self.assertIsNone(info.timestamp)

    def test_write_json(self) -> None:
        info = CollectionInfo([FileInfo(KEY_A, [KEY_B])], "c", 5)
        self.assertEqual(
            info.to_json_dumpable(),
            {
                "!": "BytestagCollectionInfo",
                "files": [{"!": "BytestagFileInfo", "hash": b64(KEY_A), "parts": [b64(KEY_B)]}],
                "comment": "c",
                "timestamp": 5,
            },
        )

    def test_wrong_header(self) -> None:
        doc = {"!": "BytestagFileInfo", "files": [{"hash": b64(KEY_A), "parts": [b64(KEY_A)]}]}
        self.assertRaises(ValueError, CollectionInfo.from_json_loadable, doc)

    def test_validation(self) -> None:
        f = FileInfo(KEY_A, (KEY_A,))
        self.assertRaises(ValueError, CollectionInfo, ())
        self.assertRaises(TypeError, CollectionInfo, (f, "x"))
        self.assertRaises(TypeError, CollectionInfo, f)
        self.assertRaises(TypeError, CollectionInfo, (f,), b"comment")
        self.assertRaises(TypeError, CollectionInfo, (f,), None, 1.5)
        self.assertRaises(TypeError, CollectionInfo, (f,), None, True)
        self.assertRaises(ValueError, CollectionInfo, (f,), None, -1)
        self.assertRaises(ValueError, CollectionInfo.from_json_loadable, {"files": []})
        self.assertRaises(
            ValueError,
            CollectionInfo.from_json_loadable,
            {"files": [f.to_json_dumpable()], "timestamp": -1},
        )


class TestFileInfo(SynchronousTestCase):
    def test_read_json(self) -> None:
        """It should read in a json with basic info."""
        doc = {"!": "BytestagFileInfo", "hash": b64(KEY_A), "parts": [b64(KEY_B), b64(KEY_C)]}
        info = FileInfo.from_bytes(json.dumps(doc).encode())
        self.assertEqual(info.file_hash, KEY_A)
        self.assertEqual(info.part_hashes, (KEY_B, KEY_C))
        self.assertIsNone(info.size)
        self.assertIsNone(info.filename)

    def test_read_json_extended(self) -> None:
        """It should read in a json with extended info."""
        doc = {
            "!": "BytestagFileInfo",
            "hash": b64(KEY_A),
            "parts": [b64(KEY_B)],
            "size": 123456,
            "filename": ["my dir", "ünïcode.txt"],
        }
        info = FileInfo.from_bytes(json.dumps(doc).encode())
        self.assertEqual(info.file_hash, KEY_A)
        self.assertEqual(info.part_hashes, (KEY_B,))
        self.assertEqual(info.size, 123456)
        self.assertEqual(info.filename, ("my dir", "ünïcode.txt"))
        self.assertEqual(info.to_json_dumpable(), doc)

    def test_header_optional(self) -> None:
        info = FileInfo.from_json_loadable({"hash": b64(KEY_A), "parts": [b64(KEY_A)]})
        self.assertEqual(info, FileInfo(KEY_A, (KEY_A,)))

    def test_wrong_header(self) -> None:
        doc = {"!": "BytestagCollectionInfo", "hash": b64(KEY_A), "parts": [b64(KEY_A)]}
        self.assertRaises(ValueError, FileInfo.from_json_loadable, doc)

    def test_lists_become_tuples(self) -> None:
        info = FileInfo(KEY_A, [KEY_B], 1, ["a"])
        self.assertEqual(info.part_hashes, (KEY_B,))
        self.assertEqual(info.filename, ("a",))
        hash(info)

    def test_validation(self) -> None:
        self.assertRaises(ValueError, FileInfo, KEY_A, ())
        self.assertRaises(TypeError, FileInfo, KEY_A, KEY_B)
        self.assertRaises(ValueError, FileInfo, KEY_A, (b"short",))
        self.assertRaises(TypeError, FileInfo, KEY_A, ("text",))
        self.assertRaises(TypeError, FileInfo, "hash", (KEY_A,))
        self.assertRaises(TypeError, FileInfo, KEY_A, (KEY_A,), 1.0)
        self.assertRaises(TypeError, FileInfo, KEY_A, (KEY_A,), True)
        self.assertRaises(ValueError, FileInfo, KEY_A, (KEY_A,), -1)
        self.assertRaises(TypeError, FileInfo, KEY_A, (KEY_A,), None, "name")
        self.assertRaises(ValueError, FileInfo, KEY_A, (KEY_A,), None, ())
        self.assertRaises(TypeError, FileInfo, KEY_A, (KEY_A,), None, ("a", 1))

    def test_bad_documents(self) -> None:
        good = {"hash": b64(KEY_A), "parts": [b64(KEY_A)]}
        for bad in [
            {"parts": [b64(KEY_A)]},
            {"hash": b64(KEY_A)},
            {**good, "parts": []},
            {**good, "parts": b64(KEY_A)},
            {**good, "parts": [1]},
            {**good, "parts": [b64(b"short")]},
            {**good, "hash": b64(b"short")},
            {**good, "hash": "not base64!"},
            {**good, "size": -1},
            {**good, "size": "1"},
            {**good, "size": 1.0},
            {**good, "size": True},
            {**good, "filename": "name"},
            {**good, "filename": []},
            {**good, "filename": ["a", 1]},
        ]:
            self.assertRaises(ValueError, FileInfo.from_json_loadable, bad)


class TestKVPExchangeInfo(SynchronousTestCase):
    def test_json_support(self) -> None:
        """It should convert to json and back."""
        info = KVPExchangeInfo(KEY_A, KEY_B, 123, 456.5)
        loadable = json.loads(json.dumps(info.to_json_dumpable()))
        self.assertEqual(
            loadable, {"key": b64(KEY_A), "index": b64(KEY_B), "size": 123, "time": 456.5}
        )
        self.assertEqual(KVPExchangeInfo.from_json_loadable(loadable), info)

    def test_timestamp_is_float(self) -> None:
        info = KVPExchangeInfo(KEY_A, KEY_B, 0, 3)
        self.assertEqual(info.timestamp, 3.0)
        self.assertIsInstance(info.timestamp, float)
        doc = {"key": b64(KEY_A), "index": b64(KEY_B), "size": 0, "time": 3}
        self.assertEqual(KVPExchangeInfo.from_json_loadable(doc), info)

    def test_from_kvp_record(self) -> None:
        record = SimpleNamespace(key=KEY_A, index=KEY_B, size=10, timestamp=1.0, value=b"x")
        self.assertEqual(
            KVPExchangeInfo.from_kvp_record(record), KVPExchangeInfo(KEY_A, KEY_B, 10, 1.0)
        )

    def test_validation(self) -> None:
        self.assertRaises(TypeError, KVPExchangeInfo, "k", KEY_B, 1, 1.0)
        self.assertRaises(ValueError, KVPExchangeInfo, KEY_A, b"i", 1, 1.0)
        self.assertRaises(TypeError, KVPExchangeInfo, KEY_A, KEY_B, 1.0, 1.0)
        self.assertRaises(TypeError, KVPExchangeInfo, KEY_A, KEY_B, True, 1.0)
        self.assertRaises(ValueError, KVPExchangeInfo, KEY_A, KEY_B, -1, 1.0)
        self.assertRaises(ValueError, KVPExchangeInfo, KEY_A, KEY_B, MAX_VALUE_SIZE + 1, 1.0)
        self.assertRaises(ValueError, KVPExchangeInfo, KEY_A, KEY_B, 1, -1.0)
        self.assertRaises(ValueError, KVPExchangeInfo, KEY_A, KEY_B, 1, math.nan)
        self.assertRaises(ValueError, KVPExchangeInfo, KEY_A, KEY_B, 1, math.inf)
        KVPExchangeInfo(KEY_A, KEY_B, MAX_VALUE_SIZE, 0.0)

    def test_bad_documents(self) -> None:
        good = {"key": b64(KEY_A), "index": b64(KEY_B), "size": 1, "time": 1.0}
        KVPExchangeInfo.from_json_loadable(good)
        for bad in [
            {k: v for k, v in good.items() if k != "time"},
            {k: v for k, v in good.items() if k != "key"},
            {**good, "time": "1"},
            {**good, "time": True},
            {**good, "time": None},
            {**good, "time": -1},
            {**good, "time": math.nan},
            {**good, "time": math.inf},
            {**good, "time": 10**400},
            {**good, "size": 1.0},
            {**good, "size": MAX_VALUE_SIZE + 1},
            {**good, "index": b64(b"short")},
            {**good, "key": 5},
        ]:
            self.assertRaises(ValueError, KVPExchangeInfo.from_json_loadable, bad)

    def test_huge_time_in_bytes(self) -> None:
        data = (
            b'{"key":"'
            + b64(KEY_A).encode()
            + b'","index":"'
            + b64(KEY_B).encode()
            + b'","size":1,"time":1'
            + b"0" * 400
            + b"}"
        )
        self.assertRaises(ValueError, KVPExchangeInfo.from_bytes, data)


class TestKVPExchangeInfoList(SynchronousTestCase):
    def test_josn_support(self) -> None:
        """It should convert to json and back."""
        infos = KVPExchangeInfoList(
            [KVPExchangeInfo(KEY_A, KEY_B, 1, 2.0), KVPExchangeInfo(KEY_C, KEY_A, 3, 4.25)]
        )
        loadable = json.loads(json.dumps(infos.to_json_dumpable()))
        self.assertEqual(len(loadable), 2)
        result = KVPExchangeInfoList.from_json_loadable(loadable)
        self.assertIsInstance(result, KVPExchangeInfoList)
        self.assertEqual(result, infos)

    def test_from_kvp_record_list(self) -> None:
        records = [
            SimpleNamespace(key=KEY_A, index=KEY_B, size=1, timestamp=2.0),
            SimpleNamespace(key=KEY_B, index=KEY_C, size=3, timestamp=4.0),
        ]
        result = KVPExchangeInfoList.from_kvp_record_list(records)
        self.assertIsInstance(result, KVPExchangeInfoList)
        self.assertEqual(
            result,
            [KVPExchangeInfo(KEY_A, KEY_B, 1, 2.0), KVPExchangeInfo(KEY_B, KEY_C, 3, 4.0)],
        )

    def test_errors(self) -> None:
        self.assertRaises(TypeError, KVPExchangeInfoList.from_json_loadable, {})
        self.assertRaises(ValueError, KVPExchangeInfoList.from_json_loadable, [[]])
        self.assertRaises(ValueError, KVPExchangeInfoList.from_json_loadable, [{}])
        self.assertEqual(KVPExchangeInfoList.from_json_loadable([]), [])


class TestNodeList(SynchronousTestCase):
    def test_josn_support(self) -> None:
        """It should convert to json and back."""
        node_list = NodeList([Node(KEY_A, "127.0.0.1", 12345), Node(KEY_B, "example.com", 1)])
        loadable = json.loads(json.dumps(node_list.to_json_dumpable()))
        self.assertEqual(
            loadable,
            [
                {"host": "127.0.0.1", "port": 12345, "id": b64(KEY_A)},
                {"host": "example.com", "port": 1, "id": b64(KEY_B)},
            ],
        )
        result = NodeList.from_json_loadable(loadable)
        self.assertIsInstance(result, NodeList)
        self.assertEqual(result, node_list)

    def test_bad_documents(self) -> None:
        good = {"host": "h", "port": 1, "id": b64(KEY_A)}
        self.assertRaises(TypeError, NodeList.from_json_loadable, good)
        for bad in [
            "node",
            None,
            {k: v for k, v in good.items() if k != "host"},
            {k: v for k, v in good.items() if k != "port"},
            {k: v for k, v in good.items() if k != "id"},
            {**good, "host": ""},
            {**good, "host": "x" * 256},
            {**good, "host": 1},
            {**good, "port": 0},
            {**good, "port": 65536},
            {**good, "port": True},
            {**good, "port": 1.0},
            {**good, "port": "1"},
            {**good, "id": b64(b"short")},
            {**good, "id": KEY_A.hex()},
        ]:
            self.assertRaises(ValueError, NodeList.from_json_loadable, [good, bad])

    @given(node_lists, keys)
    def test_sort_distance(self, node_list: NodeList, key: bytes) -> None:
        original = list(node_list)
        node_list.sort_distance(key)
        self.assertEqual(sorted(original, key=id), sorted(node_list, key=id))
        dists = [ids.distance(n.key, key) for n in node_list]
        self.assertEqual(dists, sorted(dists))
        if node_list:
            self.assertEqual(dists[0], min(ids.distance(n.key, key) for n in original))

    def test_sort_distance_example(self) -> None:
        far = Node(b"\xff" * 20, "a", 1)
        mid = Node(b"\x0f" + b"\x00" * 19, "b", 1)
        near = Node(b"\x00" * 19 + b"\x01", "c", 1)
        node_list = NodeList([far, near, mid])
        node_list.sort_distance(b"\x00" * 20)
        self.assertEqual(node_list, [near, mid, far])

    def test_sort_distance_bad_key(self) -> None:
        node_list = NodeList([Node(KEY_A, "a", 1)])
        self.assertRaises(TypeError, node_list.sort_distance, KEY_A.hex())
        self.assertRaises(ValueError, node_list.sort_distance, b"short")


class NodeTests(SynchronousTestCase):
    def test_equality_by_key_and_address(self) -> None:
        a = Node(KEY_A, "10.0.0.1", 4000)
        self.assertEqual(a, Node(KEY_A, "10.0.0.1", 4000))
        self.assertEqual(hash(a), hash(Node(KEY_A, "10.0.0.1", 4000)))
        self.assertNotEqual(a, Node(KEY_B, "10.0.0.1", 4000))
        self.assertNotEqual(a, Node(KEY_A, "10.0.0.2", 4000))
        self.assertNotEqual(a, Node(KEY_A, "10.0.0.1", 4001))
        self.assertNotEqual(a, (KEY_A, "10.0.0.1", 4000))
        self.assertFalse(a == "node")

    def test_shared_is_one_instance_per_contact_while_it_lives(self) -> None:
        a = Node.shared(KEY_A, "10.0.0.1", 4000)
        self.assertIs(Node.shared(KEY_A, "10.0.0.1", 4000), a)
        self.assertIs(Node.shared(bytes(KEY_A), "".join(["10.0.0.", "1"]), 4000), a)
        self.assertEqual(a, Node(KEY_A, "10.0.0.1", 4000))
        for other in (Node.shared(KEY_B, "10.0.0.1", 4000),
                      Node.shared(KEY_A, "10.0.0.2", 4000),
                      Node.shared(KEY_A, "10.0.0.1", 4001)):
            self.assertIsNot(other, a)
            self.assertNotEqual(other, a)
        ref = weakref.ref(a)
        del a
        gc.collect()
        self.assertIsNone(ref())  # the process-wide map holds no contact alive
        self.assertIsInstance(Node.shared(KEY_A, "10.0.0.1", 4000), Node)

    def test_shared_validates_like_the_constructor(self) -> None:
        with self.assertRaises(ValueError):
            Node.shared(KEY_A, "10.0.0.1", 0)
        with self.assertRaises(TypeError):
            Node.shared(KEY_A, 7, 4000)  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            Node.shared(b"short", "10.0.0.1", 4000)

    def test_node_in_container(self) -> None:
        """Two instances with the same id and address are the same node."""
        a = Node(KEY_A, "10.0.0.1", 4000)
        b = Node(KEY_A, "10.0.0.1", 4000)
        self.assertIsNot(a, b)
        self.assertIn(b, [a])
        self.assertIn(b, {a})
        self.assertIn(b, {a: 1})
        self.assertEqual(len({a, b}), 1)
        self.assertNotIn(Node(KEY_A, "10.0.0.1", 4001), {a})

    @given(nodes)
    def test_properties(self, node: Node) -> None:
        self.assertEqual(node.address, (node.host, node.port))
        self.assertEqual(node.key_int, ids.key_to_int(node.key))
        self.assertEqual(node.distance(KEY_A), ids.distance(node.key, KEY_A))
        self.assertEqual(node.distance(node.key), 0)
        self.assertIsInstance(repr(node), str)
        self.assertEqual(Node(node.key, node.host, node.port), node)

    def test_frozen(self) -> None:
        node = Node(KEY_A, "h", 1)
        for name, value in [("key", KEY_B), ("host", "x"), ("port", 2), ("key_int", 0)]:
            self.assertRaises(AttributeError, setattr, node, name, value)

    def test_validation(self) -> None:
        self.assertRaises(TypeError, Node, KEY_A.hex(), "h", 1)
        self.assertRaises(TypeError, Node, bytearray(KEY_A), "h", 1)
        self.assertRaises(ValueError, Node, b"short", "h", 1)
        self.assertRaises(ValueError, Node, KEY_A + b"x", "h", 1)
        self.assertRaises(TypeError, Node, KEY_A, b"h", 1)
        self.assertRaises(TypeError, Node, KEY_A, None, 1)
        self.assertRaises(ValueError, Node, KEY_A, "", 1)
        self.assertRaises(ValueError, Node, KEY_A, "x" * (MAX_HOST_BYTES + 1), 1)
        self.assertRaises(ValueError, Node, KEY_A, "é" * 128, 1)  # 256 UTF-8 bytes
        self.assertRaises(TypeError, Node, KEY_A, "h", "1")
        self.assertRaises(TypeError, Node, KEY_A, "h", 1.0)
        self.assertRaises(TypeError, Node, KEY_A, "h", True)
        self.assertRaises(ValueError, Node, KEY_A, "h", 0)
        self.assertRaises(ValueError, Node, KEY_A, "h", 65536)
        self.assertRaises(ValueError, Node, KEY_A, "h", -1)
        Node(KEY_A, "x" * MAX_HOST_BYTES, 65535)
        # A lone surrogate cannot go on the wire (a findnode answer naming it would not
        # encode), so a Node refuses it.
        self.assertRaises(ValueError, Node, KEY_A, "\ud800", 1)


class RoundTripTests(SynchronousTestCase):
    def check(self, model: Serializable) -> None:
        data = model.to_bytes()
        self.assertIsInstance(data, bytes)
        again = type(model).from_bytes(data)
        self.assertIs(type(again), type(model))
        self.assertEqual(again, model)
        self.assertEqual(again.to_bytes(), data)
        loadable = json.loads(json.dumps(model.to_json_dumpable()))
        self.assertEqual(type(model).from_json_loadable(loadable), model)

    @given(node_lists)
    def test_node_list(self, model: NodeList) -> None:
        self.check(model)

    @given(kvp_infos)
    def test_kvp_info(self, model: KVPExchangeInfo) -> None:
        self.check(model)

    @given(kvp_info_lists)
    def test_kvp_info_list(self, model: KVPExchangeInfoList) -> None:
        self.check(model)

    @given(file_infos)
    def test_file_info(self, model: FileInfo) -> None:
        self.check(model)

    @given(collection_infos)
    def test_collection_info(self, model: CollectionInfo) -> None:
        self.check(model)

    def test_bytes_are_canonical_json(self) -> None:
        data = KVPExchangeInfo(KEY_A, KEY_B, 1, 2.0).to_bytes()
        self.assertNotIn(b" ", data)
        self.assertTrue(data.startswith(b'{"index":'))


class TotalityTests(ModelsJSONTestMixin, SynchronousTestCase):
    """Decoders return a model or raise TypeError (wrong container) / ValueError only."""

    @given(model_classes, json_values)
    def test_arbitrary_json(self, cls: type[Serializable], value: object) -> None:
        self.assertTotal(cls, value)

    @given(st.data())
    def test_near_valid_documents(self, data: st.DataObject) -> None:
        for cls, _container, strategy in MODELS:
            self.assertTotal(cls, data.draw(strategy, label=cls.__name__))

    @given(model_classes, st.binary(max_size=64))
    def test_arbitrary_bytes(self, cls: type[Serializable], data: bytes) -> None:
        try:
            cls.from_bytes(data)
        except (TypeError, ValueError):
            pass

    @given(st.data())
    def test_json_bytes(self, data: st.DataObject) -> None:
        cls, _container, strategy = data.draw(st.sampled_from(MODELS))
        value = data.draw(st.one_of(strategy, json_values))
        raw = json.dumps(value).encode()
        try:
            result = cls.from_bytes(raw)
        except (TypeError, ValueError):
            return
        self.assertEqual(cls.from_bytes(result.to_bytes()), result)

    def test_edge_values_everywhere(self) -> None:
        """Every position of full documents, deleted or replaced by every edge value."""
        fi = FileInfo(KEY_A, (KEY_B, KEY_C), 10, ("d", "f"))
        docs: list[tuple[type[Serializable], Serializable]] = [
            (NodeList, NodeList([Node(KEY_A, "h", 1), Node(KEY_B, "g", 2)])),
            (KVPExchangeInfo, KVPExchangeInfo(KEY_A, KEY_B, 1, 2.5)),
            (KVPExchangeInfoList, KVPExchangeInfoList([KVPExchangeInfo(KEY_A, KEY_B, 1, 2.5)])),
            (FileInfo, fi),
            (CollectionInfo, CollectionInfo((fi, FileInfo(KEY_C, (KEY_C,))), "c", 7)),
        ]
        for cls, model in docs:
            doc = model.to_json_dumpable()
            for path in _paths(doc)[1:]:
                for value in [*EDGE_VALUES, _DELETE]:
                    copy = json.loads(json.dumps(doc))
                    parent = copy
                    for step in path[:-1]:
                        parent = parent[step]
                    if value is _DELETE:
                        del parent[path[-1]]
                    else:
                        parent[path[-1]] = value
                    self.assertTotal(cls, copy)

    def test_wrong_container_type_error(self) -> None:
        for cls, container, _strategy in MODELS:
            for value in [None, 1, 1.5, "x", True, [] if container is dict else {}]:
                self.assertRaises(TypeError, cls.from_json_loadable, value)

    def test_from_bytes_not_bytes(self) -> None:
        for cls, _container, _strategy in MODELS:
            for value in ["[]", bytearray(b"[]"), None, memoryview(b"{}")]:
                self.assertRaises(TypeError, cls.from_bytes, value)

    def test_from_bytes_bad_bytes(self) -> None:
        for cls, _container, _strategy in MODELS:
            for data in [
                b"",
                b"\xff",
                b"{",
                b"[" * 100000 + b"]" * 100000,
                b"\xef\xbb\xbf{}",
                b"[1" + b"0" * 5000 + b"]",
                b"NaN",
            ]:
                try:
                    cls.from_bytes(data)
                except (TypeError, ValueError):
                    continue
                self.fail(f"{cls.__name__}.from_bytes accepted {data[:20]!r}")
