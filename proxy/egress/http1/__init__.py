"""A lean HTTP/1.1 client for the forwarding hot path (:mod:`proxy.egress.http1.client`)."""
