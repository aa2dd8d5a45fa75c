"""The chord socket against a plain ``dict``: a hypothesis state machine.

Each example builds a few nodes (DHT on the in-memory network, sockets on the in-memory
mesh, one ``task.Clock``), then runs dict operations from random nodes, each driven to
completion on the clock with its notices delivered, and checks every result, every node's
key set and every node's add/delete event counts against the model.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.trial.unittest import SynchronousTestCase

from tests.test_chord_socket import ChordNet

NODES = 5
keys = st.sampled_from(["a", b"a", b"b", "\u00fc", b"\x00", b""])
values = st.binary(max_size=6)
nodes = st.integers(0, NODES - 1)


def norm(key: Any) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


class ChordVersusDict(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net = ChordNet(NODES)
        self.model: dict[bytes, bytes] = {}
        self.want_events: Counter[tuple[str, bytes]] = Counter()

    # -- helpers -----------------------------------------------------------------------------

    def _present(self, k: bytes, present: bool) -> None:
        """The model's presence of ``k`` becomes ``present``: expect an event if changed."""
        if (k in self.model) != present:
            self.want_events[("add" if present else "delete", k)] += 1

    def _raises_keyerror(self, result: Any) -> None:
        assert hasattr(result, "check") and result.check(KeyError), result

    # -- rules -------------------------------------------------------------------------------

    @rule(n=nodes, key=keys, value=values)
    def set(self, n: int, key: Any, value: bytes) -> None:
        k = norm(key)
        self.net.ok(self.net.socks[n].d_set(key, value))
        self._present(k, True)
        self.model[k] = value

    @rule(n=nodes, key=keys)
    def get(self, n: int, key: Any) -> None:
        result = self.net.do(self.net.socks[n].d_get(key))
        if norm(key) in self.model:
            assert result == self.model[norm(key)], (result, self.model)
        else:
            self._raises_keyerror(result)

    @rule(n=nodes, key=keys, default=values)
    def get_default(self, n: int, key: Any, default: bytes) -> None:
        result = self.net.ok(self.net.socks[n].d_get(key, default))
        assert result == self.model.get(norm(key), default)

    @rule(n=nodes, key=keys)
    def delete(self, n: int, key: Any) -> None:
        k = norm(key)
        result = self.net.do(self.net.socks[n].d_delete(key))
        if k in self.model:
            assert result is None, result
            self._present(k, False)
            del self.model[k]
        else:
            self._raises_keyerror(result)

    @rule(n=nodes, key=keys, default=st.none() | values)
    def pop(self, n: int, key: Any, default: bytes | None) -> None:
        k = norm(key)
        sock = self.net.socks[n]
        d = sock.d_pop(key) if default is None else sock.d_pop(key, default)
        result = self.net.do(d)
        if k in self.model:
            assert result == self.model[k]
            self._present(k, False)
            del self.model[k]
        elif default is None:
            self._raises_keyerror(result)
        else:
            assert result == default

    @rule(n=nodes)
    def popitem(self, n: int) -> None:
        result = self.net.do(self.net.socks[n].d_popitem())
        if not self.model:
            self._raises_keyerror(result)
            return
        k, v = result
        assert self.model.get(k) == v, (result, self.model)
        self._present(k, False)
        del self.model[k]

    @rule(n=nodes, key=keys, value=values)
    def setdefault(self, n: int, key: Any, value: bytes) -> None:
        k = norm(key)
        result = self.net.ok(self.net.socks[n].d_setdefault(key, value))
        self._present(k, True)
        assert result == self.model.setdefault(k, value)

    @rule(n=nodes, pairs=st.lists(st.tuples(keys, values), max_size=4))
    def update(self, n: int, pairs: list[tuple[Any, bytes]]) -> None:
        # a key may come twice ("a" and b"a" are one key): the last value wins
        self.net.ok(self.net.socks[n].d_update(pairs))
        for k, v in pairs:
            self._present(norm(k), True)
            self.model[norm(k)] = v

    @rule(n=nodes)
    def copy(self, n: int) -> None:
        assert self.net.ok(self.net.socks[n].d_copy()) == self.model

    @rule(n=nodes)
    def clear(self, n: int) -> None:
        self.net.ok(self.net.socks[n].d_clear())
        for k in self.model:
            self._present(k, False)
        self.model.clear()

    # -- what must hold after every step ----------------------------------------------------

    @invariant()
    def every_node_knows_the_keys(self) -> None:
        for i, sock in enumerate(self.net.socks):
            assert sorted(sock.keys()) == sorted(self.model), (i, list(sock.keys()))
            assert len(sock) == len(self.model)
            for k in (b"a", b"b", b"zz"):
                assert (k in sock) == (k in self.model)

    @invariant()
    def events_once_per_change_on_every_node(self) -> None:
        for i, got in enumerate(self.net.events):
            assert +got == +self.want_events, (i, got, self.want_events)


class StateMachineTests(SynchronousTestCase):
    def test_chord_socket_behaves_like_a_dict(self) -> None:
        from hypothesis.stateful import run_state_machine_as_test
        run_state_machine_as_test(
            ChordVersusDict,
            settings=settings(max_examples=30, stateful_step_count=25))
