"""`dltool serve`: throughput and latency over loopback against the same
SavedModel called in process, interleaved in one run.

1. `dltool new image-classifier` + `dltool train` (the template's default
   model, 1 epoch on the embedded sample: the weights do not change the
   cost of a call) + `dltool export`.
2. In process: the exported `serving_default` signature called on batches
   of C CIFAR-10 test JPEGs (../shared/data/images/cifar10/test), after
   warm-up calls: examples per second, the limit a server approaches.
3. Served: `dltool serve` (`--max-batch 32`, `--batch-timeout-ms` 2) on
   127.0.0.1 and a load generator of C asyncio clients, each with its own
   keep-alive connection sending one-image `{"instances": [{"b64": ...}]}`
   requests back to back, for a fixed time after a warm-up: requests per
   second, p50/p99 latency, and the mean batch the server's batcher formed
   (from its metadata counters). The load generator runs on the same 2
   cores as the server.

Every round runs both for each C (1, 8, 32), one right after the other; the
server stays up, idle while the in-process calls run. A round's ratio
compares two measurements taken seconds apart, so a drift of the machine's
speed over the run moves both sides of it (the earlier bench measured all
of one side, then all of the other, and its in-process figure alone moved
1,399-1,585 examples/s between idle runs). The table gives each C's median
over the rounds, and every round's ratio.

It prints a table and writes bench/results/serve.json.

    python bench/serve.py [--data DIR] [--seconds 5] [--rounds 5] [--concurrency 1,8,32]
        [--set SECTION.KEY=VALUE]...
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

import results_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "images" / "cifar10" / "test"
DLTOOL = [sys.executable, "-m", "dltool.cli"]
MAX_BATCH = 32
BATCH_TIMEOUT_MS = 2


def export_model(root, overrides=()):
    """A default image-classifier project trained 1 epoch and exported, with
    `overrides` (`SECTION.KEY=VALUE` strings) set for the training."""
    project = root / "bench"
    sets = [arg for override in overrides for arg in ("--set", override)]
    for args in (["new", "image-classifier", str(project)],
                 ["train", "--project", str(project), "--epochs", "1",
                  "--set", "training.verbose=0", *sets],
                 ["export", "--project", str(project)]):
        subprocess.run(DLTOOL + args, check=True, stdout=subprocess.DEVNULL)
    return project, next((project / "saved_models").glob("*/1"))



def load_signature(version_dir):
    """The export's `serving_default` signature, loaded in this process."""
    from dltool.engine import modelfiles

    return modelfiles.load_saved_model(version_dir)


def in_process(signature, jpegs, size, seconds):
    """Examples per second of `signature` called on batches of `size`."""
    from dltool._tf import tf

    batch = tf.constant(jpegs[:size])
    for _ in range(5):
        signature(images=batch)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        signature(images=batch)["label"].numpy()
        calls += 1
    elapsed = time.perf_counter() - start
    return {"batch": size, "calls": calls, "examples_per_s": calls * size / elapsed,
            "ms_per_call": 1000 * elapsed / calls}


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


class Server:
    """`dltool serve` on 127.0.0.1, up for the whole run."""

    def __init__(self, project, max_batch=MAX_BATCH):
        self.process = subprocess.Popen(
            DLTOOL + ["serve", "--project", str(project), "--port", "0", "--max-batch",
                      str(max_batch), "--batch-timeout-ms", str(BATCH_TIMEOUT_MS)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = next(line for line in self.process.stdout if line.startswith("Serving"))
        self.port = int(re.search(r":(\d+)/v1/models/", line)[1])
        self.name = line.split()[1]

    def close(self):
        self.process.terminate()
        self.process.wait(60)

    def measure(self, bodies, level, seconds):
        """Requests per second and latency at concurrency `level`."""
        Load(self.port, self.name, bodies, level).run(2)  # warm-up
        before = metadata(self.port, self.name)
        load = Load(self.port, self.name, bodies, level)
        elapsed = load.run(seconds)
        after = metadata(self.port, self.name)
        latencies = np.asarray(load.latencies) * 1000
        batches = after["batches"] - before["batches"]
        return {"concurrency": level, "requests": len(latencies), "errors": load.errors,
                "requests_per_s": len(latencies) / elapsed,
                "p50_ms": float(np.percentile(latencies, 50)),
                "p99_ms": float(np.percentile(latencies, 99)),
                "mean_batch": (after["examples"] - before["examples"]) / max(batches, 1)}


def interleaved(project, version_dir, jpegs, levels, seconds, rounds, max_batch=MAX_BATCH):
    """Every round, for each level: in process, then served.

    Returns:
        `{level: [{"served": ..., "in_process": ..., "ratio": ...}, ...]}`,
        one entry per round.
    """
    signature = load_signature(version_dir)
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(j).decode()}]})
              for j in jpegs]
    server = Server(project, max_batch)
    results = {level: [] for level in levels}
    try:
        for round_index in range(rounds):
            for level in levels:
                local = in_process(signature, jpegs, level, seconds)
                remote = server.measure(bodies, level, seconds)
                ratio = remote["requests_per_s"] / local["examples_per_s"]
                results[level].append({"served": remote, "in_process": local, "ratio": ratio})
                print(f"round {round_index + 1}, concurrency {level}: served "
                      f"{remote['requests_per_s']:.0f} req/s, in process "
                      f"{local['examples_per_s']:.0f} examples/s, ratio {ratio:.2f}",
                      flush=True)
    finally:
        server.close()
    return results


def summary(level, rounds):
    """One table row: the medians over the rounds, and each round's ratio."""
    def median(key, side="served"):
        return float(np.median([r[side][key] for r in rounds]))
    return {"concurrency": level, "requests_per_s": median("requests_per_s"),
            "p50_ms": median("p50_ms"), "p99_ms": median("p99_ms"),
            "mean_batch": median("mean_batch"),
            "errors": sum(r["served"]["errors"] for r in rounds),
            "in_process_examples_per_s": median("examples_per_s", "in_process"),
            "ratio": float(np.median([r["ratio"] for r in rounds])),
            "ratios": [round(r["ratio"], 3) for r in rounds], "rounds": rounds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="a config override for the served model, e.g. "
                             "model.test_time_flip=false (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    jpegs = [p.read_bytes() for p in sorted(args.data.glob("*/*.jpg"))[:256]]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        project, version_dir = export_model(Path(tmp), args.overrides)
        results = interleaved(project, version_dir, jpegs, levels, args.seconds, args.rounds,
                              args.max_batch)
    cpu = results_file.machine()["processor"]
    rows = [summary(level, results[level]) for level in levels]
    print(f"{'concurrency':>11} {'served req/s':>12} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'mean batch':>10} {'in-process ex/s':>15} {'ratio':>6}  each round's ratio")
    for row in rows:
        print(f"{row['concurrency']:>11} {row['requests_per_s']:>12.1f} {row['p50_ms']:>7.1f} "
              f"{row['p99_ms']:>7.1f} {row['mean_batch']:>10.1f} "
              f"{row['in_process_examples_per_s']:>15.1f} {row['ratio']:>6.2f}  "
              + " ".join(f"{r:.2f}" for r in row["ratios"]))
    print(f"Processor: {cpu}, {os.cpu_count()} cores; load average {load_before:.2f} "
          f"before, {os.getloadavg()[0]:.2f} after")
    results_file.write(args.out, {"seconds": args.seconds, "rounds": args.rounds,
                                  "max_batch": args.max_batch,
                                  "batch_timeout_ms": BATCH_TIMEOUT_MS,
                                  "overrides": args.overrides,
                                  "load_before": load_before, "rows": rows})


if __name__ == "__main__":
    main()
