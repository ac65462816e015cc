"""Sans-IO core of agentd: bytes and dicts in, bytes, dicts and decisions out.

Nothing in this package performs I/O, imports trio or sqlite3, or reads the clock; time is
always a parameter.
"""
