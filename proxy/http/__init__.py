"""The request path: listening, checking, routing and forwarding one request."""
