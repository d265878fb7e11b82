"""A small fake of the Kubeflow Pipelines v2beta1 REST API on loopback, recording what kfp.Client sends."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeKFP:
    """Implements healthz, experiments (list/create), runs (create), recurringruns (create) and pipelines (list by
    name, upload, upload_version)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, method: str) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                u = urlparse(self.path)
                multipart = "multipart/form-data" in (self.headers.get("Content-Type") or "")
                req = {"method": method, "path": u.path, "query": parse_qs(u.query),
                       "body": raw if multipart else (json.loads(raw) if raw else None),
                       "auth": self.headers.get("Authorization")}
                outer.requests.append(req)
                return req

            def do_GET(self):
                req = self._record("GET")
                if req["path"] == "/apis/v2beta1/healthz":
                    return self._reply(200, {"multi_user": False})
                if req["path"] == "/apis/v2beta1/experiments":
                    flt = json.loads(req["query"].get("filter", ["{}"])[0] or "{}")
                    names = [p.get("string_value") for p in flt.get("predicates", [])]
                    exps = [e for e in outer.experiments.values() if not names or e["display_name"] in names]
                    return self._reply(200, {"experiments": exps, "total_size": len(exps)} if exps else {})
                if req["path"] == "/apis/v2beta1/pipelines":
                    flt = json.loads(req["query"].get("filter", ["{}"])[0] or "{}")
                    names = [p.get("string_value") or p.get("stringValue") for p in flt.get("predicates", [])]
                    pls = [p for p in outer.pipelines.values() if not names or p["display_name"] in names]
                    return self._reply(200, {"pipelines": pls, "total_size": len(pls)} if pls else {})
                return self._reply(404, {"error": f"no route {req['path']}"})

            def do_POST(self):
                req = self._record("POST")
                b = req["body"] or {}
                if req["path"] == "/apis/v2beta1/experiments":
                    e = {"experiment_id": f"exp-{len(outer.experiments) + 1}", "display_name": b["display_name"],
                         "namespace": b.get("namespace")}
                    outer.experiments[e["experiment_id"]] = e
                    return self._reply(200, e)
                if req["path"] == "/apis/v2beta1/runs":
                    return self._reply(200, {**b, "run_id": "run-123", "state": "PENDING"})
                if req["path"] == "/apis/v2beta1/pipelines/upload":
                    name = req["query"]["name"][0]
                    pl = {"pipeline_id": f"pl-{len(outer.pipelines) + 1}", "display_name": name}
                    outer.pipelines[pl["pipeline_id"]] = pl
                    outer.versions.append({"pipeline_id": pl["pipeline_id"], "display_name": name,
                                           "pipeline_version_id": f"v-{len(outer.versions) + 1}"})
                    return self._reply(200, pl)
                if req["path"] == "/apis/v2beta1/pipelines/upload_version":
                    pid, name = req["query"]["pipelineid"][0], req["query"]["name"][0]
                    if pid not in outer.pipelines:
                        return self._reply(404, {"error": f"pipeline {pid} not found"})
                    if any(v["pipeline_id"] == pid and v["display_name"] == name for v in outer.versions):
                        return self._reply(409, {"error": f"version {name} already exists"})
                    v = {"pipeline_id": pid, "display_name": name, "pipeline_version_id": f"v-{len(outer.versions) + 1}"}
                    outer.versions.append(v)
                    return self._reply(200, v)
                if req["path"] == "/apis/v2beta1/recurringruns":
                    return self._reply(200, {**b, "recurring_run_id": "rr-456", "status": "ENABLED"})
                return self._reply(404, {"error": f"no route {req['path']}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeKFP":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posts(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]
