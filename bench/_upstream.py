"""A loopback HTTP upstream that serves files with sendfile(2), so it is never the bottleneck.

`python -m bench._upstream --port P --root DIR`

- `GET /identity/<name>` sends `<root>/<name>` as is.
- `GET /zstd/<name>` sends `<root>/<name>.zst` with `Content-Encoding: zstd`.
- `GET /stats` returns `{"<path>": <requests served>, ...}` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COUNTS: dict[str, int] = {}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/stats":
            with LOCK:
                body = json.dumps(COUNTS).encode()
            self._head(200, len(body), {"Content-Type": "application/json"})
            self.wfile.write(body)
            return
        with LOCK:
            COUNTS[self.path] = COUNTS.get(self.path, 0) + 1
        _, coding, name = self.path.split("/", 2)
        headers = {"Content-Type": "application/webc"}
        if coding == "zstd":
            name += ".zst"
            headers["Content-Encoding"] = "zstd"
        elif coding != "identity":
            self._head(404, 0, {})
            return
        path = self.root / os.path.basename(name)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            self._head(404, 0, {})
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            self._head(200, size, headers)
            self.wfile.flush()
            self.connection.sendfile(f)

    def _head(self, status: int, length: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    Handler.root = args.root
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
