"""The serving benchmark's clients: ``python -P http_clients.py URL CLIENTS REQUESTS`` prints latency
statistics as JSON. A script of the standard library and numpy, so that it starts in a fraction of a
second (``serve.bench_serve`` starts it three times a measurement)."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

BENCH_QUERIES = ("two white planes parked beside the terminal", "a port with boats along the pier",
                 "storage tanks next to a road", "a running track around a green field", "houses among trees",
                 "a river crossed by a bridge", "many cars in a parking lot", "a sandy beach by the sea")


def run_clients(url: str, clients: int, requests: int) -> dict[str, Any]:
    """``clients`` threads, each on its own keep-alive connection, sending text queries in turn."""
    host = urlsplit(url)
    latencies: list[float] = []
    errors: list[str] = []
    done = threading.Lock()

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        mine = []
        for r in range(c, requests, clients):
            q = quote(f"{BENCH_QUERIES[r % len(BENCH_QUERIES)]} {r}")
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/api/search?q={q}&k=10")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or b'"results"' not in body:
                    raise RuntimeError(f"status {response.status}")
            except Exception as exc:  # noqa: BLE001 -- every failure is counted and reported
                with done:
                    errors.append(str(exc)[:100])
                conn.close()
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
                continue
            mine.append((time.perf_counter() - t0) * 1000)
        conn.close()
        with done:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) if latencies else np.array([np.nan])
    return {"requests": requests, "clients": clients, "errors": len(errors), "first_error": errors[0] if errors else None,
            "p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "max_ms": float(ms.max()),
            "queries_per_s": len(latencies) / wall}


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -P http_clients.py URL CLIENTS REQUESTS")
    print(json.dumps(run_clients(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
