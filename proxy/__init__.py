"""tokenproxy: an authenticating egress proxy."""

__version__ = "0.1.0"
