"""Scaling: training samples per second on 1 device, 2 logical devices and 2
local workers, as ratios to the single device.

Trains the image-classifier template (default model, global batch 64) on
../shared/data/images/cifar10 (8,000 train JPEGs; the embedded 700-image
sample when that folder is absent), with no validation split, for a few
epochs in each setup:

1. `default`: one device;
2. `mirrored` on the CPU split into 2 logical devices (`runtime.cpu_devices = 2`);
3. `multi-worker`: 2 worker processes on 127.0.0.1 (`--worker-hosts`).

Samples per second = training images / the median time of the epochs after
the first (the first one traces and compiles), read from the chief's
`run.json` (`epoch_seconds`). On a machine without GPUs every setup shares
the same CPU cores, so the ratios show the cost of the distribution
machinery, not a speed-up. Run it on an otherwise idle machine: other jobs on
the same cores change the epoch times (all of them are kept in the JSON).
Results go to bench/results/scaling.json.

    flock /tmp/dltool-bench.lock python bench/scaling.py [--data DIR] [--epochs 4]
"""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "images" / "cifar10"
DLTOOL = [sys.executable, "-m", "dltool.cli"]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train(project, epochs, extra, workers=1):
    """Runs `dltool train` (once per worker); returns the chief's run.json."""
    command = [*DLTOOL, "train", "--project", str(project), "--epochs", str(epochs), "--fresh",
               "--set", "training.verbose=0", "--set", "training.warmup_epochs=0",
               "--set", "data.validation_split=0.0", *extra]
    if workers == 1:
        subprocess.run(command, check=True, timeout=1800)
    else:
        hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(workers))
        processes = [subprocess.Popen([*command, "--worker-hosts", hosts, "--task-index", str(i)])
                     for i in range(workers)]
        codes = [p.wait(timeout=1800) for p in processes]
        if codes != [0] * workers:
            sys.exit(f"workers exited with {codes}")
    newest = max((project / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((newest / "run.json").read_text())


def measure(name, meta):
    seconds = statistics.median(meta["epoch_seconds"][1:])
    return {"setup": name, "replicas": meta["replicas"], "epochs": meta["epochs_done"],
            "epoch_seconds": meta["epoch_seconds"], "train_examples": meta["sizes"]["train"],
            "samples_per_second": round(meta["sizes"]["train"] / seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                        "scaling.json")
    args = parser.parse_args()
    data = args.data if (args.data / "train").is_dir() else "builtin:cifar10"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "scaling"
        subprocess.run([*DLTOOL, "new", "image-classifier", str(project), "--data", str(data)],
                       check=True, stdout=subprocess.DEVNULL)
        setups = [
            ("1 device (default)", ["--strategy", "default"], 1),
            ("2 logical CPU devices (mirrored)",
             ["--strategy", "mirrored", "--set", "runtime.cpu_devices=2"], 1),
            ("2 local workers (multi-worker)", [], 2),
        ]
        for name, extra, workers in setups:
            started = time.perf_counter()
            rows.append(measure(name, train(project, args.epochs, extra, workers)))
            rows[-1]["command_seconds"] = round(time.perf_counter() - started, 1)
    base = rows[0]["samples_per_second"]
    for row in rows:
        row["ratio_to_one_device"] = round(row["samples_per_second"] / base, 2)
    print(f"\n{'setup':<36} {'replicas':>8} {'samples/s':>10} {'ratio':>6}")
    for row in rows:
        print(f"{row['setup']:<36} {row['replicas']:>8} {row['samples_per_second']:>10.1f} "
              f"{row['ratio_to_one_device']:>6.2f}")
    results_file.write(args.out, {
        "data": str(data if data == "builtin:cifar10" else "cifar10 (8,000 train)"),
        "batch_size": 64, "rows": rows})
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
