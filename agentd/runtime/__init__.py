"""The Trio runtime: node lifecycle, transport, peers, dispatch, outbox, and the context
services see."""
