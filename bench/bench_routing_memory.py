"""Memory of the routing table and contact bookkeeping per node, on the in-memory network.

Builds N :class:`~p2pnet.dht.network.DHTNetwork` nodes on one
:class:`~p2pnet.sim.memory.MemoryNetwork` (a ``task.Clock``, no socket), joins them all
through node 0 (one after the other), settles, and prints:

* traced Python memory per node (``tracemalloc``: everything the N nodes allocated,
  divided by N), before and after the joins;
* the size of each node's routing table and contact bookkeeping (median entries), and
  the deep size per node of the routing table and of the contact book
  (``sys.getsizeof`` walk, objects shared between nodes counted once per node).

Prints figures only; asserts nothing.

    python bench/bench_routing_memory.py [--nodes 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import tracemalloc
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.dhthelpers import Sim  # noqa: E402


def deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes held by ``obj`` and what it refers to (not counting ``seen`` objects)."""
    stack = [obj]
    total = 0
    while stack:
        o = stack.pop()
        if id(o) in seen or callable(o) and not hasattr(o, "__slots__"):
            continue
        if isinstance(o, type):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        else:
            for name in getattr(type(o), "__slots__", ()):
                if hasattr(o, name):
                    stack.append(getattr(o, name))
            d = getattr(o, "__dict__", None)
            if d is not None:
                stack.append(d)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n = args.nodes
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    sim = Sim(seed=args.seed)
    nodes = sim.add_many(n)
    gc.collect()
    empty = tracemalloc.get_traced_memory()[0]
    t0 = time.process_time()
    joined = sim.join_all()
    sim.settle(120)
    cpu = time.process_time() - t0
    gc.collect()
    full = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    ok = sum(1 for j in joined if j)
    contacts = [x.routing_table.num_contacts for x in nodes]
    table = [deep_size(x.routing_table, set()) for x in nodes]
    # the contact bookkeeping's own maps (not the node they point into); before the
    # ContactBook, the maps DHTNetwork kept itself
    book_maps = ("_failures", "_checking", "_verified", "_handover")
    old_maps = ("_failures", "_last_seen", "_node_cache", "_evicting")
    book = [deep_size([getattr(x.contacts, a) for a in book_maps], set())
            if hasattr(x, "contacts") else
            deep_size([getattr(x, a, None) for a in old_maps], set())
            for x in nodes]
    # the table and the bookkeeping together, each object once
    both = [deep_size([x.routing_table, *([getattr(x.contacts, a) for a in book_maps]
                                           if hasattr(x, "contacts") else
                                           [getattr(x, a, None) for a in old_maps])], set())
            for x in nodes]
    spares = [sum(len(getattr(b, "replacements", ())) for b in x.routing_table.buckets)
              for x in nodes]
    print(f"nodes {n}, joined {ok + 1}/{n}, join cpu {cpu:.1f} s")
    print(f"traced KiB per node: empty {(empty - base) / n / 1024:.1f}, "
          f"joined {(full - base) / n / 1024:.1f}")
    print(f"contacts per node median {statistics.median(contacts)}, "
          f"max {max(contacts)}")
    print(f"routing table KiB per node median {statistics.median(table) / 1024:.1f}; "
          f"contact bookkeeping KiB per node median {statistics.median(book) / 1024:.1f}; "
          f"both, each object once, {statistics.median(both) / 1024:.1f}")
    print(f"replacement cache entries per node median {statistics.median(spares)}")


if __name__ == "__main__":
    main()
