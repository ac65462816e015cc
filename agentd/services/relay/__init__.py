"""Weaver-style relay views: the service and the driver that reads our ledger."""
