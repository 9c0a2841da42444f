"""A TCP proxy on loopback that gives every connection a network's round-trip time.

``tc netem`` is not available on the machine this was written on, so the delay is made in user
space: every chunk read from one side is written to the other side ``rtt / 2`` later, in the
order it was read (one queue per direction, drained by a single timer, so two chunks read within
one clock tick never swap). A new connection also pays the TCP handshake a real link would
have: what the client sends is held until one full RTT after it connected, then ``rtt / 2`` more
(on loopback ``connect()`` returns at once, where a real client could send only after its SYN
and the SYN-ACK crossed the link). So a request on a new connection is answered after 2 RTT and
each further request on a kept-alive connection after 1 RTT, as on a real link. Bandwidth is not
limited (loopback's).

No flow control beyond the kernel's: a side that reads faster than the other writes buffers in
the proxy. That is fine for the small bodies it is used for (the 10 KiB files of ``bench.rtt``);
it is not a bandwidth model.

Run it as ``python -m bench.delayproxy --upstream 127.0.0.1:8080 --rtt-ms 20``; it prints
``listening <port>`` once ready and stops on SIGTERM or SIGINT. Only loopback addresses are
accepted on either side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import sys
from collections import deque

_LOOPBACK_ONLY = "only loopback addresses (127.0.0.0/8, ::1) are allowed"


class _Direction:
    """Bytes going one way: delivered ``delay_s`` after they were read, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        self._loop = loop
        self._delay_s = delay_s
        #: (due, data); data None: the end of the stream, b"": close the far side
        self._queue: deque[tuple[float, bytes | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.out: asyncio.Transport | None = None
        #: the earliest time anything may be sent on (the handshake, for the client's bytes)
        self.not_before = 0.0

    def push(self, data: bytes | None) -> None:
        """Queue ``data`` (None: end of stream, ``b""``: close) for delivery."""
        due = max(self._loop.time(), self.not_before) + self._delay_s
        self._queue.append((due, data))
        if self._timer is None:
            self._timer = self._loop.call_at(due, self._drain)

    def _drain(self) -> None:
        self._timer = None
        out = self.out
        if out is None:  # the upstream connection is still being made
            self._timer = self._loop.call_later(0.001, self._drain)
            return
        now = self._loop.time()
        while self._queue and self._queue[0][0] <= now:
            _, data = self._queue.popleft()
            if out.is_closing():
                self._queue.clear()
                return
            if data is None:
                if out.can_write_eof():
                    out.write_eof()
            elif not data:
                out.close()
            else:
                out.write(data)
        if self._queue:
            self._timer = self._loop.call_at(self._queue[0][0], self._drain)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it receives goes into ``forward``."""

    def __init__(self, forward: _Direction | None = None) -> None:
        self.forward = forward

    def data_received(self, data: bytes) -> None:
        if self.forward is not None:
            self.forward.push(data)

    def eof_received(self) -> bool:
        if self.forward is not None:
            self.forward.push(None)
        return True  # keep our half open: the other side may still answer

    def connection_lost(self, exc: Exception | None) -> None:
        # Gone (closed or reset): the far side closes too, after what is in flight.
        if self.forward is not None:
            self.forward.push(b"")


class _ClientSide(_Side):
    """The accepted socket: makes the upstream connection and the two delayed directions."""

    def __init__(self, proxy: DelayProxy) -> None:
        super().__init__()
        self._proxy = proxy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        loop, rtt_s = self._proxy.loop, self._proxy.rtt_s
        up = _Direction(loop, rtt_s / 2)  # client -> server
        down = _Direction(loop, rtt_s / 2)  # server -> client
        up.not_before = loop.time() + rtt_s  # the handshake a real link would cost
        down.out = transport
        self.forward = up
        loop.create_task(self._connect(transport, up, down))

    async def _connect(self, client: asyncio.Transport, up: _Direction, down: _Direction) -> None:
        host, port = self._proxy.upstream
        try:
            server, _ = await self._proxy.loop.create_connection(lambda: _Side(down), host, port)
        except OSError:
            up.cancel()
            client.close()
            return
        assert isinstance(server, asyncio.Transport)
        up.out = server


class DelayProxy:
    """Listens on ``127.0.0.1:<port>`` and forwards to ``upstream`` with ``rtt_s`` of delay."""

    def __init__(self, upstream: tuple[str, int], rtt_s: float, listen_port: int = 0) -> None:
        if not ipaddress.ip_address(upstream[0]).is_loopback:
            raise ValueError(f"{upstream[0]}: {_LOOPBACK_ONLY}")
        if rtt_s < 0:
            raise ValueError("rtt_s must be >= 0")
        self.upstream = upstream
        self.rtt_s = rtt_s
        self._listen_port = listen_port
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await self.loop.create_server(
            lambda: _ClientSide(self), "127.0.0.1", self._listen_port, backlog=1024
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not ipaddress.ip_address(host).is_loopback:
        raise argparse.ArgumentTypeError(f"{host}: {_LOOPBACK_ONLY}")
    return host, int(port)


async def _serve(upstream: tuple[str, int], rtt_s: float, listen_port: int) -> None:
    proxy = DelayProxy(upstream, rtt_s, listen_port)
    port = await proxy.start()
    print(f"listening {port}", flush=True)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        proxy.loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delayproxy", description=__doc__)
    parser.add_argument("--upstream", type=_address, required=True, help="host:port (loopback)")
    parser.add_argument("--rtt-ms", type=float, required=True, help="round-trip time to add")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.upstream, args.rtt_ms / 1000, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
