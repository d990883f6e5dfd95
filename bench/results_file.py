"""A bench's result file: its figures and the machine that measured them.

Every file under bench/results/ says when it was measured, on which
processor (`lscpu`'s model name and whether it has AVX-512: the machine's
processor changes between sessions, and TensorFlow's speed with it) and how
loaded the machine was, so a figure in the README can be traced to the
machine it came from. The scripts run as `python bench/NAME.py`, so this
file's folder is on their import path.
"""

import json
import os
import subprocess
import time


def machine():
    """When and where: the date (UTC), the processor, its cores and the load.

    Returns:
        A dict: `date`, `processor` (`lscpu`'s model name, with its family
        and model numbers: a virtual machine may name only "AMD EPYC"),
        `avx512`, `cpu_cores`, `load_average` (over the last minute, as the
        result is written).
    """
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True,
                               check=False).stdout.splitlines()
    except OSError:
        lines = []
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()),
            "processor": f'{fields.get("Model name", "unknown").strip()} (family '
                         f'{fields.get("CPU family", "?").strip()}, model '
                         f'{fields.get("Model", "?").strip()})',
            "avx512": "avx512f" in fields.get("Flags", "").split(),
            "cpu_cores": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 2)}


def write(path, result):
    """Writes `result` to `path` as JSON after `machine()`'s facts (a key of
    `result` wins), atomically: a run stopped while writing leaves the file
    before it.

    Args:
        path: A `pathlib.Path` (its folder is made).
        result: A dict of JSON values.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({**machine(), **result}, indent=2) + "\n")
    os.replace(temporary, path)
