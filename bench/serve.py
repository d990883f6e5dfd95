"""`dltool serve`: throughput and latency over loopback against the same
SavedModel called in process, side by side in one run.

1. `dltool new image-classifier` + `dltool train` (the template's default
   model, 1 epoch on the embedded sample: the weights do not change the
   cost of a call) + `dltool export`.
2. In process: the exported `serving_default` signature called on batches
   of 1, 8 and 32 CIFAR-10 test JPEGs (../shared/data/images/cifar10/test),
   after warm-up calls: examples per second, the limit a server approaches.
3. Served: `dltool serve` (`--max-batch 32`, `--batch-timeout-ms` 2) on
   127.0.0.1 and a load generator of C asyncio clients (C = 1, 8, 32), each
   with its own keep-alive connection sending one-image `{"instances":
   [{"b64": ...}]}` requests back to back, for a fixed time after a warm-up:
   requests per second, p50/p99 latency, and the mean batch the server's
   batcher formed (from its metadata counters). The load generator runs on
   the same 2 cores as the server.

It prints a table and writes bench/results/serve.json.

    python bench/serve.py [--data DIR] [--seconds 10] [--concurrency 1,8,32]
"""

import argparse
import asyncio
import base64
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "images" / "cifar10" / "test"
DLTOOL = [sys.executable, "-m", "dltool.cli"]
MAX_BATCH = 32
BATCH_TIMEOUT_MS = 2


def export_model(root):
    """A default image-classifier project trained 1 epoch and exported."""
    project = root / "bench"
    for args in (["new", "image-classifier", str(project)],
                 ["train", "--project", str(project), "--epochs", "1",
                  "--set", "training.verbose=0"],
                 ["export", "--project", str(project)]):
        subprocess.run(DLTOOL + args, check=True, stdout=subprocess.DEVNULL)
    return project, next((project / "saved_models").glob("*/1"))


def in_process(version_dir, jpegs, batch_sizes, seconds):
    """Examples per second of the signature called in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dltool._tf import tf
    from dltool.engine import modelfiles

    signature = modelfiles.load_saved_model(version_dir)
    results = {}
    for size in batch_sizes:
        batch = tf.constant(jpegs[:size])
        for _ in range(5):
            signature(images=batch)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            signature(images=batch)["label"].numpy()
            calls += 1
        elapsed = time.perf_counter() - start
        results[size] = {"batch": size, "calls": calls,
                         "examples_per_s": calls * size / elapsed,
                         "ms_per_call": 1000 * elapsed / calls}
    return results


class Load:
    """C clients on one event loop, each with its own keep-alive connection,
    sending one-image predict requests back to back.

    The requests are built once as bytes and the responses parsed only as
    far as the status and length: on 2 shared cores every microsecond the
    load generator spends is taken from the server.
    """

    def __init__(self, port, name, bodies, concurrency):
        self.port, self.concurrency = port, concurrency
        head = (f"POST /v1/models/{name}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n")
        self.requests = [head.format(len(body)).encode() + body.encode() for body in bodies]
        self.latencies, self.errors = [], 0

    def run(self, seconds):
        """Sends requests for `seconds`; returns the time taken."""
        async def main():
            stop = time.perf_counter() + seconds
            start = time.perf_counter()
            await asyncio.gather(*(self._client(i, stop) for i in range(self.concurrency)))
            return time.perf_counter() - start
        return asyncio.run(main())

    async def _client(self, index, stop):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        i = index
        while time.perf_counter() < stop:
            request = self.requests[i % len(self.requests)]
            i += self.concurrency
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
            await reader.readexactly(length)
            if head[9:12] == b"200":
                self.latencies.append(time.perf_counter() - sent)
            else:
                self.errors += 1
        writer.close()
        await writer.wait_closed()


def metadata(port, name):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", f"/v1/models/{name}/metadata")
    stats = json.loads(connection.getresponse().read())["metadata"]["dltool"]["batching"]
    connection.close()
    return stats


def served(project, jpegs, levels, seconds):
    """Requests per second and latency of `dltool serve` at each concurrency."""
    server = subprocess.Popen(
        DLTOOL + ["serve", "--project", str(project), "--port", "0", "--max-batch",
                  str(MAX_BATCH), "--batch-timeout-ms", str(BATCH_TIMEOUT_MS)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = next(line for line in server.stdout if line.startswith("Serving"))
        port = int(re.search(r":(\d+)/v1/models/", line)[1])
        name = line.split()[1]
        bodies = [json.dumps({"instances": [{"b64": base64.b64encode(j).decode()}]})
                  for j in jpegs]
        results = {}
        for level in levels:
            Load(port, name, bodies, level).run(2)  # warm-up: every batch size traced
            before = metadata(port, name)
            load = Load(port, name, bodies, level)
            elapsed = load.run(seconds)
            after = metadata(port, name)
            latencies = np.asarray(load.latencies) * 1000
            batches = after["batches"] - before["batches"]
            results[level] = {
                "concurrency": level, "requests": len(latencies), "errors": load.errors,
                "requests_per_s": len(latencies) / elapsed,
                "p50_ms": float(np.percentile(latencies, 50)),
                "p99_ms": float(np.percentile(latencies, 99)),
                "mean_batch": (after["examples"] - before["examples"]) / max(batches, 1)}
        return results
    finally:
        server.terminate()
        server.wait(60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    jpegs = [p.read_bytes() for p in sorted(args.data.glob("*/*.jpg"))[:256]]
    with tempfile.TemporaryDirectory() as tmp:
        project, version_dir = export_model(Path(tmp))
        local = in_process(version_dir, jpegs, levels, args.seconds)
        remote = served(project, jpegs, levels, args.seconds)
    cpu = next((line.split(":", 1)[1].strip() for line in
                subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if line.startswith("Model name")), "unknown")
    rows = []
    print(f"{'concurrency':>11} {'served req/s':>12} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'mean batch':>10} {'in-process ex/s':>15} {'ratio':>6}")
    for level in levels:
        r, l = remote[level], local[level]
        ratio = r["requests_per_s"] / l["examples_per_s"]
        rows.append({**r, "in_process_examples_per_s": l["examples_per_s"],
                     "in_process_ms_per_call": l["ms_per_call"], "ratio": ratio})
        print(f"{level:>11} {r['requests_per_s']:>12.1f} {r['p50_ms']:>7.1f} "
              f"{r['p99_ms']:>7.1f} {r['mean_batch']:>10.1f} {l['examples_per_s']:>15.1f} "
              f"{ratio:>6.2f}")
    print(f"Processor: {cpu}, {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpu": cpu,
                                    "cores": os.cpu_count(), "seconds": args.seconds,
                                    "max_batch": MAX_BATCH,
                                    "batch_timeout_ms": BATCH_TIMEOUT_MS, "rows": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
