"""A WebSocket response for `/agent` whose data frames can be handled where they are parsed.

aiohttp parses WebSocket frames in `data_received` (its compiled reader) and puts each message on a
queue; the connection's handler task wakes up, `receive()` takes the message off and returns it. For the
frames an idle fleet sends (a status report from every worker every 2.5 s, pings), that wake-up and
`receive()` were most of the server's cost per frame. `InlineFrameQueue` offers each data message to a
synchronous `inline` callback first: it handles what is safe to handle on the spot and returns None, or
returns the message (possibly with its decoded form attached) to go through the queue as before.

Order is kept by the caller's rule: it handles a frame inline only while the queue is empty and the
handler task is parked in `receive()` (nothing received earlier is still waiting or being handled).
Control frames (ping, pong, close) and errors always go through the queue, so aiohttp's close handshake
and automatic pong work unchanged.

This reaches into aiohttp's WebSocketResponse (`_post_start`) and its compiled queue class, both of the
pinned aiohttp version; tests/server/test_agent_inline_frames.py fails if either changes shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.helpers import DEFAULT_CHUNK_SIZE

#: given a data message, handle it and return None, or return what the queue should carry instead
InlineHandler = Callable[[Any], Any]

_DATA = (WSMsgType.BINARY, WSMsgType.TEXT)


class InlineFrameQueue(WebSocketDataQueue):
    """aiohttp's message queue with a synchronous first look at each data message."""

    inline: InlineHandler | None = None
    #: data messages handled inline (for tests and metrics)
    handled_inline = 0

    def feed_data(self, data: Any, size: int) -> None:
        inline = self.inline
        if inline is not None and data[0] in _DATA:
            passed = inline(data)
            if passed is None:
                self.handled_inline += 1
                return
            data = passed
        super().feed_data(data, size)

    @property
    def empty(self) -> bool:
        return not self._buffer


class InlineWebSocketResponse(web.WebSocketResponse):
    """A WebSocketResponse whose reader feeds an InlineFrameQueue (`frames`), and that can outlive the
    request handler that made it (`detach`)."""

    frames: InlineFrameQueue
    _detached = False
    _transport: Any = None

    def detach(self, request: web.BaseRequest) -> None:
        """Let the handler return while the connection goes on, served by a task of the caller's.

        A handler that awaits its WebSocket to the end keeps, for the connection's lifetime, the
        upgrade request (headers, the token, URL), aiohttp's request task and every middleware's
        frame: ~6 KB per idle worker. Detached: returning does not close the WebSocket
        (`write_eof`), aiohttp's connection loop ends without closing the transport (its
        `_force_close`, as for an upgraded connection it will not read HTTP from again), the HTTP
        parser is dropped, and this response forgets the request; the transport is closed through
        our own reference (`_close_transport`). The protocol object stays: it forwards the socket's
        end to the frame reader (connection_lost -> feed_eof), which ends the caller's receive loop.
        """
        if self._writer is None:
            raise RuntimeError("detach() needs a prepared response")
        protocol: Any = request.protocol
        self._detached = True
        protocol._force_close = True
        protocol._parser = None
        self._req = None

    async def write_eof(self) -> None:  # type: ignore[override]
        if self._detached:
            return  # aiohttp's finish_response after the handler returned: the connection goes on
        await super().write_eof()

    def _close_transport(self) -> None:  # aiohttp's: through the request, which a detached one forgot
        if self._transport is not None:
            self.close_transport()
        else:
            super()._close_transport()

    def close_transport(self) -> None:
        """Close the TCP connection (no-op when it is closed already)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "detached" if self._detached else "open"
        return f"<InlineWebSocketResponse {state}>"

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        # the same steps as aiohttp's own _post_start, with our queue in place of its WebSocketDataQueue
        self._ws_protocol = protocol
        self._writer = writer
        self._reset_heartbeat()
        loop = self._loop
        if loop is None:
            raise RuntimeError("prepare() runs on a loop")
        self.frames = InlineFrameQueue(request._protocol, DEFAULT_CHUNK_SIZE, loop=loop)
        self._reader = self.frames
        self._parser = WebSocketReader(
            self.frames, self._max_msg_size, compress=bool(self._compress), decode_text=self._decode_text
        )
        callback = None if self._heartbeat is None else self._on_data_received
        request.protocol.set_parser(self._parser, data_received_cb=callback)
        request.protocol.keep_alive(False)
        transport = self._transport = request.transport
        if callback is None and transport is not None:
            transport.set_protocol(DirectFrames(request.protocol, self._parser))  # type: ignore[arg-type]

    def write_now(self, data: bytes | str) -> bool:
        """Write one data frame to the transport synchronously; False (nothing written) when it must go
        through aiohttp's async send instead: not prepared, closing, or compressing (the deflate
        context is aiohttp's, and large compressed frames go through an executor).

        The caller keeps order: it writes now only when none of its frames is queued or being sent.
        aiohttp's own `send_frame` does the same `_write_websocket_frame` call for an uncompressed
        frame, then waits only if the transport is paused.
        """
        writer = self._writer
        if writer is None or writer.compress or self.closed or writer.transport.is_closing():
            return False
        if isinstance(data, str):
            writer._write_websocket_frame(data.encode(), WSMsgType.TEXT, 0)
        else:
            writer._write_websocket_frame(data, WSMsgType.BINARY, 0)
        return True


class DirectFrames:
    """Stands in for aiohttp's RequestHandler as the transport's protocol once the connection is a
    WebSocket: received bytes go straight to the compiled frame parser (`data_received` is its bound C
    method, so a read runs no Python frame of aiohttp's); the rest is the handler's, unchanged. A parse
    error is reported through the queue, where the connection's task closes the socket."""

    __slots__ = ("_handler", "data_received")

    def __init__(self, handler: Any, parser: WebSocketReader) -> None:
        self._handler = handler
        self.data_received = parser.feed_data

    def connection_made(self, transport: Any) -> None:  # pragma: no cover - set on an open transport
        self._handler.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._handler.connection_lost(exc)

    def eof_received(self) -> bool | None:
        result: bool | None = self._handler.eof_received()
        return result

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()
