"""The clearing house (``house``) and every node's evidence client (``client``)."""
