"""How requests leave the proxy: TLS contexts, client identities, pooled sessions, and
the one table of what can go wrong on the way."""
