"""A real socket against a live server: the client promises N bytes, sends N/2 and hangs
up. The server must keep no row and no object, on both stores."""

import socket
import time

import pytest

from backups_app.cluster_backups.models import ClusterBackup
from tests.backups_app.helpers import URL, payload
from tests.conftest import basic_auth, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _connect(live_server) -> socket.socket:
    host, port = live_server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _headers(system, length: int | None, extra: str = "") -> bytes:
    lines = [
        f"POST {URL} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: {basic_auth(system.system_key, system.issued_secret)}",
        "Content-Type: application/octet-stream",
        "X-Filename: dump.json.gz.gpg",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def test_a_connection_cut_half_way_leaves_no_row_and_no_object(live_server, system, store):
    body = payload(2 * 1024 * 1024)
    sock = _connect(live_server)
    sock.sendall(_headers(system, len(body)))
    sock.sendall(body[: len(body) // 2])
    # The server has begun: its temporary object (a .part file, an S3 multipart upload)
    # exists. Then the client goes away.
    assert wait_for(lambda: store.pending(), timeout=15), "the upload never started"
    sock.close()
    assert wait_for(lambda: not store.pending(), timeout=15), "the partial object was kept"
    time.sleep(0.2)
    assert ClusterBackup.objects.count() == 0
    assert store.keys() == []


def test_a_whole_upload_over_a_real_socket_is_stored(live_server, system, store):
    body = payload(300_000)
    sock = _connect(live_server)
    sock.sendall(_headers(system, len(body)) + body)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 201")
    assert ClusterBackup.objects.get().size == len(body)


def test_a_chunked_upload_without_content_length_gets_411(live_server, system, store):
    sock = _connect(live_server)
    sock.sendall(
        _headers(system, None, "Transfer-Encoding: chunked\r\n") + b"3\r\nabc\r\n0\r\n\r\n"
    )
    answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 411")
    assert ClusterBackup.objects.count() == 0 and store.keys() == []
