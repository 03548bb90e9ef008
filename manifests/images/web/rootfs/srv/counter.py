"""A visit counter: an HTTP server whose every response depends on state
kept in redis (INCR over the RESP protocol; standard library only)."""

import http.server
import os
import socket

HOST, PORT = os.environ.get("REDIS_ADDR", "127.0.0.1:6379").rsplit(":", 1)


def incr(key):
    with socket.create_connection((HOST, int(PORT)), timeout=5) as s:
        s.sendall(f"*2\r\n$4\r\nINCR\r\n${len(key)}\r\n{key}\r\n".encode())
        reply = s.makefile("rb").readline().decode().strip()
    if not reply.startswith(":"):
        raise RuntimeError(f"redis said {reply!r}")
    return int(reply[1:])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            body, code = f"visits: {incr('visits')}\n", 200
        except Exception as e:  # noqa: BLE001 - report any backend failure as 503
            body, code = f"redis unavailable: {e}\n", 503
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"counter listening on :{port}, redis at {HOST}:{PORT}", flush=True)
    http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
