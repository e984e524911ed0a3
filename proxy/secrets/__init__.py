"""Secrets at rest (enc:v1 envelopes) and in logs (redaction)."""
