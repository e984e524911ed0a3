"""Prometheus metrics: counted cheaply per process, added up across workers at scrape time."""
