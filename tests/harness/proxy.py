"""A TCP proxy in the test's event loop, for network faults between workers and a broker.

``async with TcpProxy("127.0.0.1", 5672) as proxy:`` listens on ``proxy.port`` and forwards each
connection to the target. Faults:

* :meth:`TcpProxy.blackhole` - nothing passes in either direction and nothing is closed, as when
  a network path silently drops packets: peers notice only through their own timeouts and
  heartbeats. New connections are accepted and left hanging. :meth:`TcpProxy.restore` lets the
  held bytes through again (what a retransmission does once the path is back).
* :meth:`TcpProxy.cut` - every connection is reset and new ones are refused until
  :meth:`TcpProxy.restore` (a broker or a path that went away and came back).
* :meth:`TcpProxy.flap` - cut and restore in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Self

_CHUNK = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``host:target_port`` (see the module)."""

    def __init__(self, host: str, target_port: int, *, port: int = 0) -> None:
        self.host = host
        self.target_port = target_port
        self.port = port
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.connections = 0  # accepted so far

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- faults ----------------------------------------------------------------------------

    def blackhole(self) -> None:
        self._flowing.clear()

    def cut(self) -> None:
        self._refusing = True
        self._reset_all()

    def restore(self) -> None:
        self._refusing = False
        self._flowing.set()

    async def flap(self, *, every: float, times: int) -> None:
        """``times`` cycles of: cut, ``every`` seconds down, restore, ``every`` seconds up."""
        for _ in range(times):
            self.cut()
            await asyncio.sleep(every)
            self.restore()
            await asyncio.sleep(every)

    # -- forwarding ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._refusing:
            _reset(writer)
            return
        await self._flowing.wait()  # a blackhole: the connection hangs
        if self._refusing:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            _reset(writer)
            return
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, link)),
            asyncio.ensure_future(self._pump(up_reader, writer, link)),
        ]
        self._pumps.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await source.read(_CHUNK):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._links.discard(link)
            for writer in link:
                _reset(writer)

    def _reset_all(self) -> None:
        for link in list(self._links):
            for writer in link:
                _reset(writer)
        self._links.clear()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped connection looks to its peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
