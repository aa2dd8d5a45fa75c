# -*- test-case-name: tests.test_models -*-
"""Value types shared by the DHT and the applications on it, with strict JSON forms.

Every ``from_json_loadable`` is total: it returns a valid object, or raises ``TypeError``
when the top-level object has the wrong type, or ``ValueError`` for any bad content.
Keys travel as base64 text, as in bytestag.
"""

from __future__ import annotations

import json
import math
import sys
import weakref
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

import attrs

from p2pnet import ids

MAX_VALUE_SIZE = 1024 * 1024
MAX_HOST_BYTES = 255


class JSONKeys:
    """Key names of bytestag's JSON wire forms (kept for compatibility of documents)."""

    RPC = "rpc"
    NETWORK_ID = "netid"
    NODE_ID = "nodeid"
    NODES = "nodes"
    KEY = "key"
    INDEX = "index"
    VALUES = "vals"
    SIZE = "size"
    TRANSFER_ID = "xferid"
    VALUE_OFFSET = "valofs"
    TIMESTAMP = "timestmp"

    class RPCs:
        PING = "ping"
        STORE = "store"
        FIND_NODE = "findnode"
        FIND_VALUE = "findval"
        GET_VALUE = "getval"


def _check_host(_inst: Any, _attr: Any, host: Any) -> None:
    if not isinstance(host, str):
        raise TypeError("host must be str")
    try:
        size = len(host.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("host is not valid text (lone surrogate)") from None
    if not 0 < size <= MAX_HOST_BYTES:
        raise ValueError("host must be 1..255 bytes")


def _check_port(_inst: Any, _attr: Any, port: Any) -> None:
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError("port must be int")
    if not 1 <= port <= 65535:
        raise ValueError("port must be in 1..65535")


def _check_key(_inst: object, attr: attrs.Attribute[Any], key: object) -> None:
    ids.check_key(key, attr.name)


@attrs.frozen(eq=False)
class Node:
    """A contact: a node id and the UDP address it answers on.

    Equal (and hashed) by id and address together, as in bytestag.
    """

    key: bytes = attrs.field(validator=_check_key)
    host: str = attrs.field(validator=_check_host)
    port: int = attrs.field(validator=_check_port)
    key_int: int = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "key_int", int.from_bytes(self.key, "big"))

    @classmethod
    def trusted(cls, key: bytes, host: str, port: int) -> Node:
        """Build without validation, for decoders that have checked every field."""
        node = object.__new__(cls)
        object.__setattr__(node, "key", key)
        object.__setattr__(node, "host", host)
        object.__setattr__(node, "port", port)
        object.__setattr__(node, "key_int", int.from_bytes(key, "big"))
        return node

    @classmethod
    def shared(cls, key: bytes, host: str, port: int) -> Node:
        """The process's one live instance of this contact (made and validated when there
        is none).  Nodes are immutable, so the routing tables of many nodes in one
        process (a simulation, a test network, a crowd of 1,000) share each contact
        instead of holding ~200 bytes each per table; the instance goes with its last
        table."""
        k = (key, port, host)
        node = _SHARED_NODES.get(k)
        if node is None:
            node = cls(key, sys.intern(host), port)
            _SHARED_NODES[k] = node
        return node

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def distance(self, key: bytes) -> int:
        return self.key_int ^ int.from_bytes(key, "big")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return self.key == other.key and self.port == other.port and self.host == other.host

    def __hash__(self) -> int:
        return hash((self.key, self.host, self.port))

    def __repr__(self) -> str:
        return f"Node({self.key.hex()[:12]}.., {self.host}:{self.port})"


_SHARED_NODES: weakref.WeakValueDictionary[tuple[bytes, int, str], Node] = (
    weakref.WeakValueDictionary())

T = TypeVar("T")


def _need(d: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in d:
        raise ValueError(f"missing {name!r}")
    value = d[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{name!r} has the wrong type")
    return value


def _b64key(d: dict[str, Any], name: str) -> bytes:
    return ids.key_from_base64(_need(d, name, str))


def _check_dict(o: object) -> dict[str, Any]:
    if not isinstance(o, dict):
        raise TypeError("expected a JSON object")
    return o


def _check_list(o: object) -> list[Any]:
    if not isinstance(o, list):
        raise TypeError("expected a JSON array")
    return o


def _as_value_error(func: Any, item: object) -> Any:
    """Call a nested decoder; its TypeError (wrong shape inside) becomes ValueError."""
    try:
        return func(item)
    except TypeError as e:
        raise ValueError(str(e)) from e


class Serializable:
    """JSON bytes <-> object, for documents kept on the DHT."""

    def to_json_dumpable(self) -> Any:
        raise NotImplementedError

    @classmethod
    def from_json_loadable(cls: type[T], o: object) -> T:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return json.dumps(
            self.to_json_dumpable(), sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls: type[T], data: bytes) -> T:
        if not isinstance(data, bytes):
            raise TypeError("expected bytes")
        try:
            loaded = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"not JSON: {e}") from e
        result: T = cls.from_json_loadable(loaded)  # type: ignore[attr-defined]
        return result


class NodeList(list[Node], Serializable):
    """A list of :class:`Node`, JSON: ``[{"host", "port", "id" (base64)}]``."""

    HOST = "host"
    PORT = "port"
    NODE_ID = "id"

    def to_json_dumpable(self) -> list[dict[str, Any]]:
        return [
            {self.HOST: n.host, self.PORT: n.port, self.NODE_ID: ids.key_to_base64(n.key)}
            for n in self
        ]

    @classmethod
    def from_json_loadable(cls, array: object) -> NodeList:
        result = cls()
        for item in _check_list(array):
            if not isinstance(item, dict):
                raise ValueError("node entry is not an object")
            host = _need(item, cls.HOST, str)
            port = _need(item, cls.PORT, int)
            key = _b64key(item, cls.NODE_ID)
            try:
                result.append(Node(key, host, port))
            except TypeError as e:
                raise ValueError(str(e)) from e
        return result

    def sort_distance(self, key: bytes) -> None:
        """Sort in place, closest to ``key`` first."""
        k = int.from_bytes(ids.check_key(key), "big")
        self.sort(key=lambda n: n.key_int ^ k)


def _check_size(_inst: Any, _attr: Any, size: Any) -> None:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError("size must be int")
    if not 0 <= size <= MAX_VALUE_SIZE:
        raise ValueError(f"size must be in 0..{MAX_VALUE_SIZE}")


def _check_timestamp(_inst: Any, _attr: Any, ts: Any) -> None:
    if not isinstance(ts, float):
        raise TypeError("timestamp must be float")
    if not math.isfinite(ts) or ts < 0:
        raise ValueError("timestamp must be finite and not negative")


def _to_float(ts: Any) -> float:
    try:
        return float(ts)
    except OverflowError as e:  # an int beyond the float range
        raise ValueError("timestamp out of range") from e


@attrs.frozen
class KVPExchangeInfo(Serializable):
    """What a node holds for a (key, index): its size and publication time."""

    KEY: ClassVar[str] = "key"
    INDEX: ClassVar[str] = "index"
    SIZE: ClassVar[str] = "size"
    TIMESTAMP: ClassVar[str] = "time"

    key: bytes = attrs.field(validator=_check_key)
    index: bytes = attrs.field(validator=_check_key)
    size: int = attrs.field(validator=_check_size)
    timestamp: float = attrs.field(converter=_to_float, validator=_check_timestamp)

    @classmethod
    def from_kvp_record(cls, record: Any) -> KVPExchangeInfo:
        return cls(record.key, record.index, record.size, record.timestamp)

    def to_json_dumpable(self) -> dict[str, Any]:
        return {
            self.KEY: ids.key_to_base64(self.key),
            self.INDEX: ids.key_to_base64(self.index),
            self.SIZE: self.size,
            self.TIMESTAMP: self.timestamp,
        }

    @classmethod
    def from_json_loadable(cls, o: object) -> KVPExchangeInfo:
        d = _check_dict(o)
        ts = _need(d, cls.TIMESTAMP, (int, float))
        try:
            return cls(_b64key(d, cls.KEY), _b64key(d, cls.INDEX), _need(d, cls.SIZE, int), ts)
        except TypeError as e:
            raise ValueError(str(e)) from e


class KVPExchangeInfoList(list[KVPExchangeInfo], Serializable):
    """A list of :class:`KVPExchangeInfo`."""

    @classmethod
    def from_kvp_record_list(cls, records: Iterable[Any]) -> KVPExchangeInfoList:
        return cls(KVPExchangeInfo.from_kvp_record(r) for r in records)

    def to_json_dumpable(self) -> list[dict[str, Any]]:
        return [info.to_json_dumpable() for info in self]

    @classmethod
    def from_json_loadable(cls, array: object) -> KVPExchangeInfoList:
        return cls(
            _as_value_error(KVPExchangeInfo.from_json_loadable, item)
            for item in _check_list(array)
        )


def _check_hashes(_inst: Any, _attr: Any, hashes: Any) -> None:
    if not isinstance(hashes, tuple):
        raise TypeError("part hashes must be a tuple")
    if not hashes:
        raise ValueError("a file has at least one part")
    for h in hashes:
        ids.check_key(h, "part hash")


def _check_optional_size(_inst: Any, _attr: Any, size: Any) -> None:
    if size is None:
        return
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError("size must be int or None")
    if size < 0:
        raise ValueError("size cannot be negative")


def _check_filename(_inst: Any, _attr: Any, name: Any) -> None:
    if name is None:
        return
    if not isinstance(name, tuple):
        raise TypeError("filename must be a tuple of path parts or None")
    if not name:
        raise ValueError("filename needs at least one part")
    for part in name:
        if not isinstance(part, str):
            raise TypeError("filename parts must be str")


def _tuple_or_same(o: object) -> object:
    return tuple(o) if isinstance(o, list) else o


@attrs.frozen
class FileInfo(Serializable):
    """The hash of a file, the hashes of its parts, and optionally its size and path parts."""

    HEADER: ClassVar[str] = "BytestagFileInfo"
    HASH: ClassVar[str] = "hash"
    PART_HASHES: ClassVar[str] = "parts"
    SIZE: ClassVar[str] = "size"
    FILENAME: ClassVar[str] = "filename"

    file_hash: bytes = attrs.field(validator=_check_key)
    part_hashes: tuple[bytes, ...] = attrs.field(
        converter=_tuple_or_same, validator=_check_hashes
    )
    size: int | None = attrs.field(default=None, validator=_check_optional_size)
    filename: tuple[str, ...] | None = attrs.field(
        default=None, converter=_tuple_or_same, validator=_check_filename
    )

    def to_json_dumpable(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "!": self.HEADER,
            self.HASH: ids.key_to_base64(self.file_hash),
            self.PART_HASHES: [ids.key_to_base64(h) for h in self.part_hashes],
        }
        if self.filename is not None:
            d[self.FILENAME] = list(self.filename)
        if self.size is not None:
            d[self.SIZE] = self.size
        return d

    @classmethod
    def from_json_loadable(cls, o: object) -> FileInfo:
        d = _check_dict(o)
        if d.get("!", cls.HEADER) != cls.HEADER:
            raise ValueError("not a file info document")
        parts = _need(d, cls.PART_HASHES, list)
        hashes = []
        for p in parts:
            if not isinstance(p, str):
                raise ValueError("part hash is not a string")
            hashes.append(ids.key_from_base64(p))
        size = d.get(cls.SIZE)
        if size is not None:
            size = _need(d, cls.SIZE, int)
        filename = d.get(cls.FILENAME)
        if filename is not None:
            filename = _need(d, cls.FILENAME, list)
        try:
            return cls(_b64key(d, cls.HASH), tuple(hashes), size, filename)
        except TypeError as e:
            raise ValueError(str(e)) from e


def _check_files(_inst: Any, _attr: Any, files: Any) -> None:
    if not isinstance(files, tuple):
        raise TypeError("file infos must be a tuple")
    if not files:
        raise ValueError("a collection has at least one file")
    for f in files:
        if not isinstance(f, FileInfo):
            raise TypeError("expected FileInfo")


def _check_comment(_inst: Any, _attr: Any, comment: Any) -> None:
    if comment is not None and not isinstance(comment, str):
        raise TypeError("comment must be str or None")


def _check_collection_time(_inst: Any, _attr: Any, ts: Any) -> None:
    if ts is None:
        return
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise TypeError("timestamp must be int or None")
    if ts < 0:
        raise ValueError("timestamp must not be negative")


@attrs.frozen
class CollectionInfo(Serializable):
    """A set of files, with an optional comment and creation time."""

    HEADER: ClassVar[str] = "BytestagCollectionInfo"
    FILES: ClassVar[str] = "files"
    COMMENT: ClassVar[str] = "comment"
    TIMESTAMP: ClassVar[str] = "timestamp"

    file_infos: tuple[FileInfo, ...] = attrs.field(
        converter=_tuple_or_same, validator=_check_files
    )
    comment: str | None = attrs.field(default=None, validator=_check_comment)
    timestamp: int | None = attrs.field(default=None, validator=_check_collection_time)

    def to_json_dumpable(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "!": self.HEADER,
            self.FILES: [f.to_json_dumpable() for f in self.file_infos],
        }
        if self.comment is not None:
            d[self.COMMENT] = self.comment
        if self.timestamp is not None:
            d[self.TIMESTAMP] = self.timestamp
        return d

    @classmethod
    def from_json_loadable(cls, o: object) -> CollectionInfo:
        d = _check_dict(o)
        if d.get("!", cls.HEADER) != cls.HEADER:
            raise ValueError("not a collection info document")
        files = [
            _as_value_error(FileInfo.from_json_loadable, f)
            for f in _need(d, cls.FILES, list)
        ]
        comment = d.get(cls.COMMENT)
        if comment is not None:
            comment = _need(d, cls.COMMENT, str)
        ts = d.get(cls.TIMESTAMP)
        if ts is not None:
            ts = _need(d, cls.TIMESTAMP, int)
        try:
            return cls(tuple(files), comment, ts)
        except TypeError as e:
            raise ValueError(str(e)) from e
