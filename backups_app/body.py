"""A request body read straight from gunicorn's socket into the caller's buffer.

Why this exists: a cluster backup is one large body (up to 2 GiB). gunicorn's own body
reader (``gunicorn.http.body.Body`` over a ``LengthReader`` over a ``SocketUnreader``)
copies every byte through several ``BytesIO`` buffers on its way to the application,
which for a 1 GiB upload costs more time than hashing it. When a request is served by
gunicorn and its body has a ``Content-Length``, :func:`gunicorn_readinto` reads it with
``recv_into`` into a buffer the caller reuses: one copy, kernel to buffer.

What it relies on, checked against gunicorn 27.0 (sync and gthread workers; gunicorn is
pinned to 27.x in pyproject.toml): ``environ["wsgi.input"]`` is a ``Body`` whose
``reader`` is a ``LengthReader`` (``length``: body bytes not yet taken from the
connection) over an unreader holding read-ahead (``take_buffered()``, ``unread()``) of
the socket that is ``environ["gunicorn.socket"]``; ``Body.buf`` holds body bytes the
reader has already handed over. The bytes gunicorn holds are taken first, then the rest
comes from the socket; ``LengthReader.length`` is kept equal to what is still unread,
so after the last byte gunicorn sees a consumed body and a keep-alive connection
(gthread) carries on with the next request. A broken or short body sets ``Body.failed``,
as gunicorn's own reader does, so that connection is closed rather than reused.

Any other shape (Django's test client, runserver, another server, a chunked body, TLS,
a body already partly read, another gunicorn) gets ``None`` and the caller uses
``request.read`` as before. Nothing is touched until the first read, so a request
refused before its body (411, 413, quota) leaves gunicorn's state as it found it.
"""

import io
import socket
from collections.abc import Callable

ReadInto = Callable[[memoryview], int]


def readinto_from(read: Callable[[int], bytes]) -> ReadInto:
    """A ``readinto`` over a ``read(n)`` (Django's ``request.read``): one copy more."""

    def readinto(view: memoryview) -> int:
        data = read(len(view))
        view[: len(data)] = data
        return len(data)

    return readinto


def gunicorn_readinto(environ: dict) -> ReadInto | None:
    """``readinto(view)`` straight from gunicorn's socket, or None if this is not that.

    ``readinto`` fills ``view`` unless the body ends first, returns the number of bytes
    written (0 once the body is over or the client went away) and raises ``OSError``
    when the connection breaks.
    """
    try:
        from gunicorn.http.body import Body, LengthReader
    except ImportError:
        return None
    declared = environ.get("CONTENT_LENGTH") or ""
    if not declared.isdigit():
        return None
    body = environ.get("wsgi.input")
    sock = environ.get("gunicorn.socket")
    if not isinstance(body, Body) or type(sock) is not socket.socket:
        return None  # not gunicorn, or TLS (recv_into's flags differ)
    reader = getattr(body, "reader", None)
    unreader = getattr(reader, "unreader", None)
    if not (
        isinstance(reader, LengthReader)
        and isinstance(getattr(reader, "length", None), int)
        and isinstance(getattr(body, "buf", None), io.BytesIO)
        and isinstance(getattr(body, "failed", None), bool)
        and getattr(unreader, "sock", None) is sock
        and hasattr(unreader, "take_buffered")
        and hasattr(unreader, "unread")
    ):
        return None
    with body.buf.getbuffer() as handed:
        if handed.nbytes + reader.length != int(declared):
            return None  # part of the body was read already: the usual reader goes on
    return _GunicornBody(body, reader, unreader, sock).readinto


class _GunicornBody:
    def __init__(self, body, reader, unreader, sock: socket.socket):
        self.body = body
        self.reader = reader
        self.unreader = unreader
        self.sock = sock
        self.held: memoryview | None = None  # what gunicorn had buffered, taken lazily

    def _take_held(self) -> memoryview:
        handed = self.body.buf.getvalue()  # already counted out of reader.length
        self.body.buf = io.BytesIO()
        ahead = self.unreader.take_buffered()
        mine = ahead[: self.reader.length]
        if len(ahead) > len(mine):
            self.unreader.unread(ahead[len(mine) :])  # a pipelined next request
        self.reader.length -= len(mine)
        return memoryview(handed + mine)

    def readinto(self, view: memoryview) -> int:
        if self.held is None:
            self.held = self._take_held()
        filled = min(len(view), len(self.held))
        if filled:
            view[:filled] = self.held[:filled]
            self.held = self.held[filled:]
        while filled < len(view) and self.reader.length:
            want = min(len(view) - filled, self.reader.length)
            try:
                got = self.sock.recv_into(view[filled:], want, socket.MSG_WAITALL)
            except OSError:
                self.body.failed = True
                raise
            if not got:  # the client closed the connection mid-body
                self.body.failed = True
                break
            self.reader.length -= got
            filled += got
        return filled
