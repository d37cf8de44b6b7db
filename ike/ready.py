"""Telling a supervisor that the daemon is ready: systemd's ``sd_notify`` protocol and a ready file.

Why: a supervisor (systemd ``Type=notify``, a test, a container's health check) must not poll the control socket
or guess with sleeps. The daemon is ready once its configuration is loaded and every socket (IKE, NAT-T, control)
is bound; then ``READY=1`` goes to ``$NOTIFY_SOCKET`` (one datagram to a unix socket, as sd_notify(3) sends it;
``@`` names an abstract socket) and the ready file appears, written whole (a temporary file renamed into place),
holding the same JSON the control socket's ``status`` command returns. On the way out ``STOPPING=1`` is sent and
the ready file removed. No systemd library is needed for one datagram.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["Readiness", "sd_notify"]

log = logging.getLogger("ike.daemon")


def sd_notify(address: str | None, state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STATUS=...``, newline-separated) to a notify socket; False if none or
    unreachable (a supervisor that went away must not stop the daemon)."""
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("cannot notify the supervisor at %s: %s", address, exc)
        return False


class Readiness:
    """Where readiness goes: a notify socket (``$NOTIFY_SOCKET``, read by ``__main__``), a ready file, or both."""

    def __init__(self, *, notify_socket: str | None = None, ready_file: str | os.PathLike[str] | None = None) -> None:
        self.notify_socket = notify_socket
        self.ready_file = Path(ready_file) if ready_file is not None else None
        self._written = False

    def ready(self, status: dict[str, Any]) -> None:
        """Announce readiness with the daemon's status (a JSON-ready dict). A ready file that cannot be written
        is an OSError: the supervisor waiting for it would otherwise wait forever."""
        if self.ready_file is not None:
            tmp = self.ready_file.with_name(f".{self.ready_file.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(status, indent=2) + "\n")
                os.replace(tmp, self.ready_file)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise OSError(f"ready file {self.ready_file}: {exc.strerror or exc}") from None
            self._written = True
        listening = ", ".join(f"{h}[{p}]" for h, p in status.get("listening", ()))
        sd_notify(self.notify_socket, f"READY=1\nSTATUS=listening on {listening}\nMAINPID={os.getpid()}")

    def stopping(self) -> None:
        sd_notify(self.notify_socket, "STOPPING=1")
        if self.ready_file is not None and self._written:
            with contextlib.suppress(FileNotFoundError):
                self.ready_file.unlink()
            self._written = False
