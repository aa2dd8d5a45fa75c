"""Persistent stores: sqlite PeerStore, LevelDB DBManager/AppointmentsDBM, DHT value table."""
