"""Loopback servers for the remote-input tests, started and stopped by the tests (never any other network):

* :class:`RangeServer`: a static file server with HTTP Range support (single ranges, as GDAL's /vsicurl/ asks)
  that counts the bytes of file content it sends, plus JSON routes (a tiny STAC API), a log of requests, injected
  latency and failures, and Apache-style folder indexes (which GDAL's /vsicurl/ parses to list a folder). It runs in
  a **subprocess** (``python tests/loopback.py --range ROOT PORT``) and the test reads and sets its state through a
  control route: GDAL asks for some files (side-cars such as ``.msk`` and ``.aux.xml``, folder listings through
  pyogrio) while its caller holds the GIL, which an in-process server thread would need to answer (a deadlock).
* :func:`folder_server`: a :class:`RangeServer` as a context manager yielding its URL.
* :func:`moto_s3`: moto's S3 server on 127.0.0.1 (a subprocess), with GDAL's S3 settings in the environment.
* :func:`azurite`: Azurite's Blob service (Microsoft's Azure Storage emulator, an npm package that ``make
  emulators`` installs) on 127.0.0.1 (a subprocess), with the connection string GDAL's ``/vsiaz/`` and rrsis read.
* :func:`gcs_emulator`: ``gcp-storage-emulator`` (a GCS server, JSON API and downloads) on 127.0.0.1 (a
  subprocess), with the variables of GDAL's ``/vsigs/`` and of ``google-cloud-storage`` in the environment. The
  emulator does not answer the XML API's bucket listing that GDAL's ``/vsigs/`` directory listing sends
  (``GET /bucket/?prefix=…``: 501), so its subprocess (``python tests/loopback.py --gcs PORT``) adds that one
  route, answering a ``ListBucketResult`` from the emulator's own object list (:func:`xml_listing`).

All stop themselves after :data:`LIFETIME` seconds whatever happens to the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

LIFETIME = 300.0  # seconds: a server left running by a crashed test stops itself
CONTROL = "/__loopback__"  # the route through which a test reads and sets a RangeServer's state


class RangeServerCore:
    """What :class:`RangeServer` runs in its subprocess. Serves ``root`` on 127.0.0.1 (``url``) with Range
    support; ``bytes_sent`` counts file bytes sent, ``ranges`` lists them (path, first byte, last byte);
    ``requests`` logs (method, path, query, body) of every request; ``latency`` delays every answer (``max_in_flight``:
    the most requests waiting out their latency at once); ``routes`` maps a path to the JSON it answers;
    ``failures`` makes the next requests of a path answer 503, ``forbidden`` paths answer 403; a folder's URL ending
    in ``/`` answers an Apache-style index. :data:`CONTROL` (not logged, never delayed): ``GET`` answers the state,
    ``POST`` a JSON object sets some of it (``reset: true`` clears the counts)."""

    def __init__(self, root: Path, port: int = 0):
        self.root = Path(root)
        self.bytes_sent = 0
        self.requests: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.ranges: list[tuple[str, int, int]] = []  # (path, first byte, last byte) of every file content sent
        self.routes: dict[str, Any] = {}
        self.failures: dict[str, int] = {}  # path -> how many more requests answer 503 (a transient error)
        self.forbidden: set[str] = set()  # paths that answer 403
        self.latency = 0.0  # seconds each request waits before its answer (a network's round trip)
        self.in_flight = self.max_in_flight = 0  # requests in their latency wait now / at most at once so far
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # seconds: a client that stops reading cannot hold a thread longer

            def log_message(self, *args):  # quiet
                pass

            def _wait_latency(self):
                """The round trip, counted in ``in_flight`` while it lasts: it ends before any answer is sent, so
                a client that waits for each answer never has two requests counted at once."""
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.latency)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def do_HEAD(self):
                self._answer(send_body=False)

            def do_GET(self):
                self._answer(send_body=True)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                self._answer(send_body=True, body=body)

            def _answer(self, send_body: bool, body: Any = None):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if parts.path == CONTROL:
                    if body is not None:
                        server.control(body)
                    self._json(server.state(), send_body)
                    return
                if server.latency:
                    self._wait_latency()
                with server._lock:
                    server.requests.append((self.command, parts.path, query, body))
                with server._lock:
                    failing = server.failures.get(parts.path, 0)
                    if failing:
                        server.failures[parts.path] = failing - 1
                if failing or parts.path in server.forbidden:
                    self.send_error(503 if failing else 403)
                    return
                if parts.path in server.routes:
                    self._json(server.routes[parts.path], send_body)
                    return
                target = (server.root / parts.path.lstrip("/")).resolve()
                if parts.path.endswith("/") and target.is_dir() and (target == server.root.resolve()
                                                                     or server.root.resolve() in target.parents):
                    self._index(target, send_body)
                    return
                if server.root.resolve() not in target.parents or not target.is_file():
                    self.send_error(404)
                    return
                size = target.stat().st_size
                start, end = 0, size - 1
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    end = min(int(match.group(2)) if match.group(2) else end, size - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                with target.open("rb") as file:  # the range only: a whole large file per request would cost more
                    file.seek(start)
                    chunk = file.read(max(0, end + 1 - start))
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{target.stat().st_mtime_ns:x}-{size:x}"')
                self.end_headers()
                if send_body:
                    with server._lock:  # counted before the client can have it: a test reading the counts
                        # as soon as its request returns sees them (counted after, they could still be missing)
                        server.bytes_sent += len(chunk)
                        server.ranges.append((parts.path, start, start + len(chunk) - 1))
                    self.wfile.write(chunk)

            def _index(self, folder: Path, send_body: bool):
                """An Apache-style "Index of" page: what GDAL's /vsicurl/ parses to list a folder."""
                names = [p.name + ("/" if p.is_dir() else "") for p in sorted(folder.iterdir())]
                links = "".join(f'<a href="{name}">{name}</a>\n' for name in names)
                payload = (f"<html><head><title>Index of {self.path}</title></head><body><h1>Index of "
                           f"{self.path}</h1><pre>\n{links}</pre></body></html>").encode()
                self._send(payload, "text/html", send_body)

            def _json(self, answer: Any, send_body: bool):
                self._send(json.dumps(answer).encode(), "application/json", send_body)

            def _send(self, payload: bytes, content_type: str, send_body: bool):
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if send_body:
                    self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # stop() never waits for a stuck connection
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._timer = threading.Timer(LIFETIME, self.stop)
        self._timer.daemon = True

    def start(self) -> RangeServerCore:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"bytes_sent": self.bytes_sent, "requests": list(self.requests), "ranges": list(self.ranges),
                    "failures": dict(self.failures), "forbidden": sorted(self.forbidden), "latency": self.latency,
                    "max_in_flight": self.max_in_flight}

    def control(self, changes: dict[str, Any]) -> None:
        with self._lock:
            if changes.get("reset"):
                self.bytes_sent = 0
                self.requests.clear()
                self.ranges.clear()
            self.failures.update(changes.get("failures", {}))
            self.forbidden.update(changes.get("forbid", []))
            self.forbidden.difference_update(changes.get("allow", []))
            self.routes.update(changes.get("routes", {}))
            self.latency = changes.get("latency", self.latency)
            self.max_in_flight = changes.get("max_in_flight", self.max_in_flight)


class RangeServer:
    """A :class:`RangeServerCore` of ``root`` in a subprocess on 127.0.0.1 (``url``), killed by :meth:`stop` and by
    ``timeout`` after :data:`LIFETIME` seconds in any case. Its state reads and sets as if it were in this process:
    ``bytes_sent``, ``ranges``, ``requests`` (lists of tuples), :meth:`distinct_bytes`, :meth:`reset_counts`,
    ``latency`` and ``max_in_flight`` (settable), ``failures[path] = n`` (the next n requests answer 503),
    ``forbidden.add(path)``/``.discard(path)`` (403), ``routes[path] = json`` (answered as JSON)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.failures = _Remote(self, "failures")
        self.routes = _Remote(self, "routes")
        self.forbidden = _Remote(self, "forbidden")
        self._process: subprocess.Popen | None = None

    def start(self) -> RangeServer:
        self._process = start_server([sys.executable, __file__, "--range", str(self.root), str(self.port)])
        try:
            wait_for_port(self.port, self._process, "range server")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._process is not None:
            stop_server(self._process)

    def _control(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            payload = None if changes is None else json.dumps(changes).encode()
            connection.request("GET" if payload is None else "POST", CONTROL, body=payload,
                               headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            if answer.status != 200:
                raise RuntimeError(f"range server control answered {answer.status}")
            return json.loads(answer.read())
        finally:
            connection.close()

    @property
    def bytes_sent(self) -> int:
        return self._control()["bytes_sent"]

    @property
    def ranges(self) -> list[tuple[str, int, int]]:
        return [tuple(r) for r in self._control()["ranges"]]

    @property
    def requests(self) -> list[tuple[str, str, dict[str, list[str]], Any]]:
        return [tuple(r) for r in self._control()["requests"]]

    @property
    def latency(self) -> float:
        return self._control()["latency"]

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._control({"latency": seconds})

    @property
    def max_in_flight(self) -> int:
        return self._control()["max_in_flight"]

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        self._control({"max_in_flight": value})

    def reset_counts(self) -> None:
        self._control({"reset": True})

    def distinct_bytes(self) -> int:
        """How many distinct bytes of the files were sent (a byte sent twice counts once)."""
        total, last_path, end = 0, None, -1
        for path, first, last in sorted(self.ranges):
            if path != last_path:
                last_path, end = path, -1
            if last > end:
                total += last - max(first, end + 1) + 1
                end = last
        return total


class _Remote:
    """``failures``, ``routes`` or ``forbidden`` of a :class:`RangeServer`, read and set through its control route."""

    def __init__(self, server: RangeServer, name: str):
        self.server, self.name = server, name

    def __getitem__(self, key: str) -> Any:
        return self.server._control()[self.name][key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.server._control()[self.name].get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.server._control({self.name: {key: value}})

    def __contains__(self, key: str) -> bool:
        return key in self.server._control()[self.name]

    def add(self, path: str) -> None:
        self.server._control({"forbid": [path]})

    def discard(self, path: str) -> None:
        self.server._control({"allow": [path]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str]) -> subprocess.Popen:
    """``command`` under ``timeout LIFETIME``, in a process group of its own so that :func:`stop_server` ends the
    server itself, not only the ``timeout`` wrapper (a SIGKILLed wrapper would leave its child running)."""
    return subprocess.Popen(["timeout", str(int(LIFETIME)), *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop_server(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGKILL the server's process group and wait until no member is left (the server, a grandchild, exits
    after its ``timeout`` parent, and closes its socket only then)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


@contextmanager
def folder_server(root: Path):
    """A :class:`RangeServer` of ``root``; yields its URL and stops it on exit."""
    server = RangeServer(root).start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def moto_s3():
    """moto's S3 server on 127.0.0.1:<free port>; yields (boto3 client, environment for GDAL). The process is
    killed on exit, and by ``timeout`` after :data:`LIFETIME` seconds in any case."""
    import boto3

    port = free_port()
    process = start_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
    try:
        wait_for_port(port, process, "moto server")
        env = {"AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
               "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        yield client, env
    finally:
        stop_server(process)


@contextmanager
def gcs_emulator():
    """``gcp-storage-emulator`` (in memory) on 127.0.0.1:<free port>, with the XML listing route
    (:func:`xml_listing`); yields (google-cloud-storage client, environment for GDAL and rrsis). The process is
    killed on exit, and by ``timeout`` after :data:`LIFETIME` seconds in any case."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port()
    process = start_server([sys.executable, __file__, "--gcs", str(port)])
    try:
        wait_for_port(port, process, "GCS emulator")
        endpoint = f"http://127.0.0.1:{port}"
        env = {"STORAGE_EMULATOR_HOST": endpoint, "CPL_GS_ENDPOINT": endpoint + "/", "GS_NO_SIGN_REQUEST": "YES",
               "GOOGLE_CLOUD_PROJECT": "test"}
        client = storage.Client(project="test", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": endpoint})
        yield client, env
    finally:
        stop_server(process)


AZURITE_ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key (public, documented)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary() -> str | None:
    """``azurite-blob`` installed by ``make emulators`` (``.emulators/``), else on PATH, else None."""
    import shutil

    local = Path(__file__).resolve().parents[1] / ".emulators" / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.is_file() else shutil.which("azurite-blob")


@contextmanager
def azurite():
    """Azurite's Blob service (in memory, at most 512 MB) on 127.0.0.1:<free port>; yields (``BlobServiceClient``,
    environment for GDAL's ``/vsiaz/`` and rrsis: the connection string). Killed on exit, and by ``timeout`` after
    :data:`LIFETIME` seconds in any case."""
    from azure.storage.blob import BlobServiceClient

    binary = azurite_binary()
    if binary is None:
        raise RuntimeError("azurite-blob not found: run `make emulators`")
    port = free_port()
    process = start_server([binary, "--inMemoryPersistence", "--extentMemoryLimit", "512", "--blobHost", "127.0.0.1",
                            "--blobPort", str(port), "--skipApiVersionCheck", "--silent", "--loose"])
    try:
        wait_for_port(port, process, "Azurite")
        connection = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                      f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
        yield BlobServiceClient.from_connection_string(connection), {"AZURE_STORAGE_CONNECTION_STRING": connection}
    finally:
        stop_server(process)


def xml_listing(request, response, storage) -> None:
    """``GET /bucket/?prefix=P&delimiter=D``: the XML API's ListBucketResult (what GDAL's /vsigs/ parses), built
    from the emulator's object list; one page (no ``IsTruncated``)."""
    from http import HTTPStatus
    from xml.sax.saxutils import escape

    query = {key: values[0] for key, values in request.query.items()}
    prefix = query.get("prefix", "")
    try:
        objects, prefixes = storage.get_file_list(request.params["bucket_name"], prefix or None,
                                                  query.get("delimiter") or None)
    except Exception:  # noqa: BLE001 - the emulator's NotFound: no such bucket
        response.status = HTTPStatus.NOT_FOUND
        return
    contents = "".join(f"<Contents><Key>{escape(o['name'])}</Key><Generation>{o['generation']}</Generation>"
                       f"<LastModified>{o['updated']}</LastModified><ETag>\"{o.get('md5Hash', '')}\"</ETag>"
                       f"<Size>{o['size']}</Size></Contents>" for o in objects)
    folders = "".join(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes)
    response.write_file(f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
                        f'xmlns="http://doc.s3.amazonaws.com/2006-03-01"><Name>{request.params["bucket_name"]}'
                        f'</Name><Prefix>{escape(prefix)}</Prefix><IsTruncated>false</IsTruncated>{contents}'
                        f'{folders}</ListBucketResult>'.encode(), "application/xml")


def run_gcs_emulator(port: int) -> None:
    """The emulator in memory on 127.0.0.1:``port``, with :func:`xml_listing` as its last route."""
    from gcp_storage_emulator import server

    server.HANDLERS = (*server.HANDLERS, (r"^/(?P<bucket_name>[-.\w]+)/?$", {"GET": xml_listing}))
    server.create_server("127.0.0.1", port, in_memory=True).run()


if __name__ == "__main__":  # subprocesses: python loopback.py --range ROOT PORT or --gcs PORT
    if sys.argv[1] == "--gcs":
        run_gcs_emulator(int(sys.argv[2]))
    else:
        served = RangeServerCore(Path(sys.argv[2]), int(sys.argv[3])).start()
        served._thread.join()
