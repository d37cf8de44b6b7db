"""Encrypted (SK, RFC 7296 3.14) and Encrypted Fragment (SKF, RFC 7383 2.5) payloads."""
from .encrypted import SkfPayload, SkPayload

__all__ = ["SkPayload", "SkfPayload"]
