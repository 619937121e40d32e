#!/usr/bin/env python3
"""Fake Switchyard admin API for developing src/admin/dashboard.html without the hub.

    python3 tests/dashboard/mock_admin.py [PORT]      (env MOCK_TOKEN, default dev-token;
                                                       MOCK_FAIL=/v1/series answers that GET with 500)
    open http://127.0.0.1:PORT/dashboard#token=dev-token

Two consumers (dash_crm running, dash_marketing paused), one dead letter for dash_crm,
one review entry, one active dead_letter_growth alert. A replay job finishes ~1.5 s
after it starts: the entry leaves its queue and the consumer's delivered count goes up.
"""
import json, os, random, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = os.path.join(HERE, "..", "..", "src", "admin", "dashboard.html")
TOKEN = os.environ.get("MOCK_TOKEN", "dev-token")
FAIL = os.environ.get("MOCK_FAIL", "")
CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data:; connect-src 'self'; frame-ancestors 'none'")
now = lambda: int(time.time() * 1000)
T0 = now()
lock = threading.Lock()


def consumer(name, state, delivered, dl, rv, err):
    return {"name": name, "state": state, "concurrency": 4, "backlog": 12 if state == "paused" else 0,
            "oldest_pending_ms": 125000 if state == "paused" else None, "dead_letters": dl, "reviews": rv,
            "breaker": "closed", "breaker_opened": 0, "delivered": delivered, "skipped_done": 3, "retried": 4,
            "dead_lettered": dl, "reviewed": rv, "infra_errors": 0, "in_flight": 0, "last_error": err,
            "downstream": {"200": delivered, "503": 4}}


def entry(i, cons, queue, evt, etype, reason):
    return {"id": i, "consumer": cons, "queue": queue, "source": "stripe", "event_id": evt, "event_type": etype,
            "received_at_ms": T0 - 400000, "parked_at_ms": T0 - 300000, "attempts": 3, "reason": reason}


CONSUMERS = [consumer("dash_crm", "running", 120, 1, 0,
                      "dash_crm answered 503: upstream connect error or disconnect/reset before headers <b>x</b>"),
             consumer("dash_marketing", "paused", 40, 0, 1, None)]
QUEUES = {"dead_letter": [entry(7, "dash_crm", "dead_letter", "evt_dash_1", "invoice.paid",
                                "gave up after 3 attempts: dash_crm answered 503")],
          "review": [entry(2, "dash_marketing", "review", "evt_dash_2", "customer.updated",
                           "plugin asked for review: <script>alert(1)</script>")]}
ALERTS = {"active": [{"id": 3, "rule": "dead_letter_growth", "subject": {"kind": "consumer", "name": "dash_crm"},
                      "started_at_ms": T0 - 95000, "raised_at_ms": T0 - 65000, "cleared_at_ms": None, "value": 1,
                      "peak": 1, "baseline": 0, "threshold": 1, "unit": "events",
                      "cause": {"kind": "downstream_errors", "statuses": {"503": 4}},
                      "message": "consumer `dash_crm`: 1 new dead letter in 5 min; downstream answered 503 ×4"}],
          "recent": [{"id": 1, "rule": "delivery_failures", "subject": {"kind": "consumer", "name": "dash_crm"},
                      "started_at_ms": T0 - 900000, "raised_at_ms": T0 - 870000, "cleared_at_ms": T0 - 600000,
                      "value": 0.93, "peak": 0.97, "baseline": 0.01, "threshold": 0.2, "unit": "ratio",
                      "cause": {"kind": "rate_limited", "answers_429": 12, "limiter_waits": 30},
                      "message": "consumer `dash_crm`: delivery failure ratio 0.93 above 0.20 (baseline 0.01)"}]}
JOBS = {}
rng = random.Random(7)
SERIES = {c["name"]: [{"at_ms": T0 - (90 - i) * 10000, "delivered": rng.randint(0, 9) if c["state"] == "running" else 0,
                       "failed": rng.choice([0, 0, 0, 1, 3]), "backlog": 0, "oldest_pending_ms": None}
                      for i in range(90)] for c in CONSUMERS}


def settle():
    """Finish replay jobs that have run for 1.5 s."""
    for job in JOBS.values():
        if job["state"] == "running" and now() - job["started_at_ms"] > 1500:
            for queue, cons, ids in job["_moves"]:
                moved = [e for e in QUEUES[queue] if e["consumer"] == cons and e["id"] in ids]
                QUEUES[queue] = [e for e in QUEUES[queue] if e not in moved]
                for c in CONSUMERS:
                    if c["name"] == cons:
                        c["delivered"] += len(moved)
                        c["dead_letters" if queue == "dead_letter" else "reviews"] -= len(moved)
            job.update(state="done", processed=job["total"], queued=job["total"], finished_at_ms=now())


def public(job):
    return {k: v for k, v in job.items() if not k.startswith("_")}


class Handler(BaseHTTPRequestHandler):
    def send(self, status, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet; never log headers (token)
        pass

    def route(self, method):
        path = self.path.split("?", 1)[0]
        if method == "GET" and path == "/dashboard":
            with open(PAGE, "rb") as f:
                return self.send(200, f.read(), "text/html; charset=utf-8")
        if self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self.send(401, {"error": "unauthorized", "message": "missing or wrong bearer token"})
        if FAIL and path == FAIL:
            return self.send(500, {"error": "internal", "message": "mock failure"})
        parts = path.strip("/").split("/")
        with lock:
            settle()
            if method == "GET" and path == "/v1/consumers":
                return self.send(200, CONSUMERS)
            if method == "GET" and path == "/v1/alerts":
                return self.send(200, ALERTS)
            if method == "GET" and path == "/v1/series":
                return self.send(200, {"interval_ms": 10000, "consumers": SERIES})
            if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "queues"] and parts[2] in QUEUES:
                return self.send(200, QUEUES[parts[2]])
            if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "jobs"] and parts[2] in JOBS:
                return self.send(200, public(JOBS[parts[2]]))
            if method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "consumers"] and parts[3] in ("pause", "resume"):
                for c in CONSUMERS:
                    if c["name"] == parts[2]:
                        c["state"] = "paused" if parts[3] == "pause" else "running"
                        return self.send(200, {"consumer": c["name"], "paused": parts[3] == "pause"})
                return self.send(404, {"error": "not_found", "message": "no consumer " + parts[2]})
            if method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "queues"] and parts[2] in QUEUES and parts[3] == "replay":
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                flt, dry = body.get("filter") or {}, body.get("dry_run", True)
                hits = [e for e in QUEUES[parts[2]] if flt.get("consumer") in (None, e["consumer"])
                        and (flt.get("ids") is None or e["id"] in flt["ids"])]
                out = {"dry_run": dry, "matched": len(hits), "done": 0, "sample": hits[:10], "job": None}
                if dry or not hits:
                    return self.send(200, out)
                jid = str(len(JOBS) + 1)
                JOBS[jid] = {"id": int(jid), "kind": parts[2] + "_replay", "state": "running", "total": len(hits),
                             "processed": 0, "queued": 0, "started_at_ms": now(), "finished_at_ms": None,
                             "error": None, "_moves": [(parts[2], e["consumer"], [e["id"]]) for e in hits]}
                out["job"] = public(JOBS[jid])
                return self.send(202, out)
            if method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "queues"] and parts[2] in QUEUES and parts[3] == "discard":
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                flt, dry = body.get("filter") or {}, body.get("dry_run", True)
                hits = [e for e in QUEUES[parts[2]] if flt.get("consumer") in (None, e["consumer"])
                        and (flt.get("ids") is None or e["id"] in flt["ids"])]
                if not dry:
                    QUEUES[parts[2]] = [e for e in QUEUES[parts[2]] if e not in hits]
                return self.send(200, {"dry_run": dry, "matched": len(hits), "done": 0 if dry else len(hits),
                                       "sample": hits[:10], "job": None})
        self.send(404, {"error": "not_found", "message": "no such admin route"})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8099
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"mock admin on http://127.0.0.1:{port}/dashboard#token={TOKEN}", flush=True)
    server.serve_forever()
