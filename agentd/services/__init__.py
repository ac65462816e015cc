"""Services: the glue between a protocol target, the store and the RPC surface."""
