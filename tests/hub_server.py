"""A tiny stand-in for the Hugging Face hub on 127.0.0.1, for fetch tests without any network.

It answers ``HEAD``/``GET {endpoint}/{repo}/resolve/{revision}/{path}`` the way the hub does for LFS
files (``X-Repo-Commit``, ``ETag``/``X-Linked-Etag`` = the content's sha256, ``Content-Length``,
``Range`` requests with ``206``), ``404`` with ``X-Error-Code: RepoNotFound`` / ``EntryNotFound``
for unknown repositories and files, and can misbehave on purpose: cut the first download after
``cut_at`` bytes, send slowly (``delay`` seconds per ``chunk``), or state a wrong sha256.
Every request is recorded in ``requests`` as ``(method, path, range header)``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, files: dict[tuple[str, str], bytes] | None = None):
        self.files = dict(files or {})
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_at: int | None = None  # cut the first GET of each file after this many bytes
        self.delay = 0.0
        self.chunk = 1 << 16
        self.wrong_sha: set[tuple[str, str]] = set()
        self._cut_done: set[tuple[str, str]] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                server._answer(self, head=True)

            def do_GET(self):
                server._answer(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        rng = h.headers.get("Range")
        self.requests.append(("HEAD" if head else "GET", h.path, rng))
        m = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", h.path.split("?")[0])
        if m is None or not any(r == m["repo"] for r, _ in self.files):
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        key = (m["repo"], m["path"])
        if key not in self.files:
            return self._error(h, 404, "EntryNotFound", "Entry not found")
        data = self.files[key]
        sha = hashlib.sha256(data).hexdigest()
        if key in self.wrong_sha:
            sha = hashlib.sha256(data + b"x").hexdigest()
        start = 0
        if rng and not head:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{sha}"')
        h.send_header("X-Linked-Etag", f'"{sha}"')
        h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        body = data[start:]
        limit = len(body)
        if self.cut_at is not None and key not in self._cut_done and not start:
            self._cut_done.add(key)
            limit = self.cut_at
        sent = 0
        try:
            while sent < limit:
                n = min(self.chunk, limit - sent)
                h.wfile.write(body[sent:sent + n])
                h.wfile.flush()
                sent += n
                if self.delay:
                    time.sleep(self.delay)
        except (BrokenPipeError, ConnectionResetError):
            return
        if limit < len(body):
            h.close_connection = True
            h.connection.shutdown(2)  # a cut connection: fewer bytes than Content-Length announced

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, code: int, error_code: str, message: str) -> None:
        body = f'{{"error": "{message}"}}'.encode()
        h.send_response(code)
        h.send_header("X-Error-Code", error_code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
