"""Persistent stores: sqlite PeerStore, LevelDB DBManager/AppointmentsDBM, key spaces.

Every store is an ``IService`` with one lifecycle: ``startService`` (start),
``when_ready()`` (ready: the database is open, opened off the reactor thread), and
``stopService`` (stop: drain, flush, close).  Errors are :class:`~p2pnet.store.errors.StoreError`.
"""
