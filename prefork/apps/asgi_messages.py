"""What ``send()`` raises when an ASGI app breaks the rules of its messages, or
sends after its client has gone.

Interpreted in the compiled build (setup.py): mypyc does not compile
subclasses of OSError. The rules of response headers are ``asgi_fields``'.
"""

from __future__ import annotations


class ClientDisconnected(OSError):
    """``send()`` after the client went away (the spec asks for an OSError subclass)."""


class AsgiMessageError(RuntimeError):
    """The app sent a message that breaks the protocol (wrong type, bad status or headers)."""
