#!/usr/bin/env python3
"""Stand-ins for the CRM, ERP and marketing APIs of the README walk-through.

    python3 tools/mock-saas.py                 # crm=9101 erp=9102 marketing=9103
    python3 tools/mock-saas.py crm=19101 erp=19102 marketing=19103

Listens on each port (127.0.0.1 unless MOCK_SAAS_HOST is set), answers every
request 200 `{}` and prints one line per request: port, method, path, the
Idempotency-Key switchyard sent, and the body.
"""
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMES = {9101: "crm", 9102: "erp", 9103: "marketing"}
# print() writes the text and the newline apart, so under concurrency two
# calls could share a line: each line goes out whole, one writer at a time.
OUTPUT = threading.Lock()


def say(line):
    with OUTPUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        port = self.server.server_address[1]
        # A body on one line, so one call is one line.
        body = body.replace("\r", "\\r").replace("\n", "\\n")
        say(
            f"{NAMES.get(port, port):<10} {self.command:<6} {self.path} "
            f"idempotency-key={self.headers.get('Idempotency-Key')} {body}"
        )
        payload = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

    def log_message(self, *args):
        pass


def main():
    host = os.environ.get("MOCK_SAAS_HOST", "127.0.0.1")
    ports = []
    for arg in sys.argv[1:] or ["9101", "9102", "9103"]:
        name, _, port = arg.rpartition("=")
        if name:
            NAMES[int(port)] = name
        ports.append(int(port))
    servers = [ThreadingHTTPServer((host, port), Handler) for port in ports]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    say(f"mock SaaS APIs on {host}:{', '.join(map(str, ports))}")
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
