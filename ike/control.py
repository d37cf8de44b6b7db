"""The daemon's control socket: a unix socket speaking JSON lines, one request object per line, one reply each.

Why apart from the daemon: the wire (framing, limits, stale-socket takeover, permissions) and the command table
are the operator's interface (``python -m ike initiate|list-sas|rekey|terminate|stats|status``, as swanctl talks
to charon's VICI), while the daemon only offers the operations. A command is an ``async (daemon, request) ->
dict`` in :data:`COMMANDS`; a :class:`ControlError` it raises becomes ``{"ok": false, "error": ...}``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .errors import InvalidStateError

__all__ = ["COMMANDS", "MAX_CONTROL_CLIENTS", "MAX_CONTROL_LINE", "ControlError", "ControlServer", "handle_request"]

log = logging.getLogger("ike.daemon")

#: Longest control request accepted (bytes); a longer line closes the connection.
MAX_CONTROL_LINE = 64 * 1024
#: Concurrent control connections.
MAX_CONTROL_CLIENTS = 16


class ControlError(Exception):
    """A control request that cannot be carried out; the message goes back to the client."""


async def handle_request(daemon: Any, line: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """One control request -> one reply; never raises."""
    try:
        req = line if isinstance(line, dict) else json.loads(line)
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            raise ControlError('a request is a JSON object with a "cmd" string')
        handler = COMMANDS.get(req["cmd"])
        if handler is None:
            raise ControlError(f"unknown command {req['cmd']!r}; known: {', '.join(sorted(COMMANDS))}")
        result = await handler(daemon, req)
        return {"ok": True, **result}
    except (ControlError, InvalidStateError) as exc:  # the operator's request, refused: no traceback
        return {"ok": False, "error": str(exc)}
    except json.JSONDecodeError as exc:
        return {"ok": False, "error": f"not JSON: {exc}"}
    except (RecursionError, MemoryError):  # json.loads recurses per nesting level
        return {"ok": False, "error": "not a request: JSON nested too deep"}
    except Exception as exc:  # a bug must not kill the daemon; the client sees what happened
        log.exception("control request failed")
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


class ControlServer:
    """The listening unix socket (mode 0600) and its bounded set of clients; ``handler(line)`` answers."""

    def __init__(self, handler: Callable[[bytes], Awaitable[dict[str, Any]]]) -> None:
        self.handler = handler
        self.path: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._clients = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, path: str | os.PathLike[str]) -> None:
        """Listen at ``path``; a stale socket of a crashed daemon is replaced, a live one refused (OSError)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            # A stale socket from a crashed daemon; refuse to take over a live one.
            try:
                r, w = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
                w.close()
                raise OSError(f"control socket {path} is in use by another daemon")
            except (ConnectionRefusedError, FileNotFoundError, asyncio.TimeoutError):
                path.unlink()
        old = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(path), limit=MAX_CONTROL_LINE)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.path = path

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for w in list(self._writers):
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CONTROL_CLIENTS:
            writer.close()
            return
        self._clients += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(json.dumps({"ok": False, "error": "request too long"}).encode() + b"\n")
                    break
                if not line:
                    break
                reply = await self.handler(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._clients -= 1
            self._writers.discard(writer)
            writer.close()


# --------------------------------------------------------------------------------------------------------
# Commands


def _child_spi(daemon: Any, req: dict[str, Any]) -> int:
    value = req.get("child")
    if value is None:
        raise ControlError('"child" (inbound SPI in hex, or a CHILD_SA name) is required')
    if isinstance(value, int):
        return value
    text = str(value)
    named = [c.spi_in for c in daemon.children.values() if c.event.child == text and c.state == "INSTALLED"]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise ControlError(f"several CHILD_SAs are named {text!r}; give the inbound SPI")
    try:
        return int(text, 16)
    except ValueError:
        raise ControlError(f"no CHILD_SA {text!r}") from None


def _ike_id(daemon: Any, req: dict[str, Any]) -> int:
    if isinstance(req.get("ike_id"), int):
        return req["ike_id"]
    peer = req.get("ike") or req.get("peer")
    if isinstance(peer, str):
        live = [r.ike_id for r in daemon.ike_sas.values()
                if r.peer == peer and r.state in ("CONNECTING", "ESTABLISHED")]
        if live:
            return live[-1]
        raise ControlError(f"no IKE_SA with {peer!r}")
    raise ControlError('"ike_id" or "ike" (the peer name) is required')


async def cmd_list_sas(daemon: Any, req: dict[str, Any]) -> dict[str, Any]:
    sas = daemon.list_sas()
    if isinstance(req.get("ike"), str):
        sas = [s for s in sas if s["name"] == req["ike"]]
    return {"ike_sas": sas}


async def cmd_initiate(daemon: Any, req: dict[str, Any]) -> dict[str, Any]:
    peer = req.get("ike") or req.get("peer")
    if not isinstance(peer, str):
        raise ControlError('"ike" (the peer name) is required')
    if not any(p.name == peer for p in daemon.config.core.peers):
        raise ControlError(f"no peer named {peer!r}")
    timeout = float(req.get("timeout", 10.0))
    if not 0 < timeout <= 600:
        raise ControlError("timeout must be in (0, 600] seconds")
    child = req.get("child") if isinstance(req.get("child"), str) else None
    return await daemon.initiate_and_wait(peer, child, timeout)


async def cmd_rekey(daemon: Any, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("child") is not None:
        spi = _child_spi(daemon, req)
        daemon.rekey_child(spi)
        return {"rekeying": f"{spi:08x}"}
    ike_id = _ike_id(daemon, req)
    daemon.rekey_ike(ike_id)
    rec = daemon.ike_sas[ike_id]
    return {"rekeying": ike_id, "ike": rec.peer, "spi_i": f"{rec.spi_i:016x}", "spi_r": f"{rec.spi_r:016x}"}


async def cmd_terminate(daemon: Any, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("child") is not None:
        spi = _child_spi(daemon, req)
        daemon.delete_child(spi)
        return {"deleting": f"{spi:08x}"}
    ike_id = _ike_id(daemon, req)
    daemon.terminate(ike_id)
    timeout = float(req.get("timeout", 5.0))
    deadline = daemon.now() + min(max(timeout, 0.0), 60.0)
    while daemon.ike_sas[ike_id].state != "DELETED" and daemon.now() < deadline:
        await asyncio.sleep(0.02)
    return {"ike_id": ike_id, "state": daemon.ike_sas[ike_id].state}


async def cmd_stats(daemon: Any, req: dict[str, Any]) -> dict[str, Any]:
    return {"stats": daemon.stats()}


async def cmd_status(daemon: Any, req: dict[str, Any]) -> dict[str, Any]:
    return {"status": daemon.status()}


async def cmd_list_conns(daemon: Any, req: dict[str, Any]) -> dict[str, Any]:
    conns = []
    for p in daemon.config.core.peers:
        conns.append({"name": p.name, "version": p.version, "remote_addr": p.remote_addr, "remote_port": p.remote_port,
                      "local_id": str(p.local_id), "remote_id": str(p.remote_id) if p.remote_id else None,
                      "ike_proposals": list(p.ike_proposals), "auth": p.auth,
                      "children": [{"name": c.name, "local_ts": [str(t) for t in c.local_ts],
                                    "remote_ts": [str(t) for t in c.remote_ts],
                                    "esp_proposals": list(c.esp_proposals), "mode": c.mode}
                                   for c in p.children]})
    return {"conns": conns}


async def cmd_child_keys(daemon: Any, req: dict[str, Any]) -> dict[str, Any]:
    """The outbound ESP SAs of installed CHILD_SAs (all, or one by name or SPI in hex) as an espresso TOML SA
    file, for ``python -m esp pcap send --daemon``. Keys leave only in this reply on the 0600 socket."""
    from .kernel import outbound_sa_toml

    want = req.get("child")
    kids = [c for c in daemon.children.values() if c.state == "INSTALLED" and c.outbound_active]
    if want is not None:
        text = str(want).lower()
        kids = [c for c in kids if text in (c.event.child.lower(), f"{c.spi_in:08x}", f"{c.spi_out:08x}")]
        if not kids:
            raise ControlError(f"no installed CHILD_SA {want!r}")
    return {"children": [{"name": c.event.child, "spi_out": f"{c.spi_out:08x}"} for c in kids],
            "sa_toml": outbound_sa_toml(kids)}


COMMANDS: dict[str, Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "list-sas": cmd_list_sas,
    "initiate": cmd_initiate,
    "rekey": cmd_rekey,
    "terminate": cmd_terminate,
    "stats": cmd_stats,
    "status": cmd_status,
    "list-conns": cmd_list_conns,
    "child-keys": cmd_child_keys,
}
