"""Test doubles for code built on llmbatch: the scripted `EchoProvider` and its script
items. The loopback HTTP server lives in :mod:`llmbatch.testing.server` (not imported
here, to keep this import cheap)."""

from llmbatch.providers.echo import EchoProvider, ErrorResponse, text_response

__all__ = ["EchoProvider", "ErrorResponse", "text_response"]
