"""Weaver-style relay views: the service (service.py), its clients' RPC methods (clients.py),
the source side (source.py) and the driver that reads our ledger (driver.py)."""
