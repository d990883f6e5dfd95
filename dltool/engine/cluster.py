"""The workers of a multi-worker run: who they are and which one is chief.

A cluster comes from `--worker-hosts HOST:PORT,HOST:PORT --task-index I`, or
from a `TF_CONFIG` already in the environment (TensorFlow's format:
`{"cluster": {"worker": [...], "chief": [...]}, "task": {"type", "index"}}`).
The chief is the `chief` task if there is one, else worker 0; it alone
writes the run folder, the others write to temporary folders.

This module never imports TensorFlow.
"""

import dataclasses
import errno
import json
import os
import socket

from dltool.core.errors import ConfigError, DltoolError

_TASK_TYPES = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The workers of a multi-worker run and this process's place in it.

    Attributes:
        jobs: Dict of task type (`chief`, `worker`) to a tuple of `host:port`.
        task_type: This process's task type.
        task_index: This process's index within its task type.
        source: Where the cluster came from (`--worker-hosts`, `TF_CONFIG`).
    """

    jobs: dict
    task_type: str
    task_index: int
    source: str

    @property
    def size(self):
        """Number of processes in the cluster."""
        return sum(len(hosts) for hosts in self.jobs.values())

    @property
    def is_chief(self):
        """Whether this process is the chief (the one that writes the run)."""
        if "chief" in self.jobs:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def address(self):
        """This process's `host:port`."""
        return self.jobs[self.task_type][self.task_index]

    @property
    def name(self):
        """A short name for messages, e.g. `worker 1`."""
        return f"{self.task_type} {self.task_index}"

    def tf_config(self):
        """Returns the cluster as a TF_CONFIG JSON string."""
        return json.dumps({"cluster": {k: list(v) for k, v in self.jobs.items()},
                           "task": {"type": self.task_type, "index": self.task_index}})

    def check_port_free(self):
        """Checks that this process can listen on its port.

        Raises:
            DltoolError: if the port is in use.
        """
        port = int(self.address.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As TensorFlow's server does: connections of an earlier run
            # waiting to close (TIME_WAIT) do not hold the port, a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise DltoolError(f"port {port} of {self.name} ({self.address}) is "
                                      "already in use; pick another port") from None
                raise DltoolError(f"cannot listen on {self.address} for {self.name}: "
                                  f"{e.strerror}") from None


def parse_host(text, what="--worker-hosts"):
    """Checks one `host:port` entry and returns it stripped.

    Raises:
        ConfigError: if it is not `host:port` with a port from 1 to 65535.
    """
    entry = text.strip()
    host, sep, port = entry.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535) or \
            any(c.isspace() for c in entry):
        raise ConfigError(f"{what}: {text.strip()!r} is not HOST:PORT (a port from 1 to "
                          "65535), e.g. 10.0.0.1:12345")
    return entry


def from_flags(worker_hosts, task_index):
    """Builds the cluster of `--worker-hosts` and `--task-index`.

    Args:
        worker_hosts: Comma-separated `host:port` list; worker 0 is chief.
        task_index: This process's index in that list.

    Returns:
        A `Cluster`.

    Raises:
        ConfigError: on a malformed list, a repeated address, or an index
            out of range.
    """
    if task_index is None:
        raise ConfigError("--worker-hosts needs --task-index (this worker's index, from 0)")
    hosts = tuple(parse_host(h) for h in worker_hosts.split(","))
    _check_unique(hosts, "--worker-hosts")
    if not 0 <= task_index < len(hosts):
        raise ConfigError(f"--task-index must be from 0 to {len(hosts) - 1} for "
                          f"{len(hosts)} worker hosts; got {task_index}")
    return Cluster({"worker": hosts}, "worker", task_index, "--worker-hosts")


def from_tf_config(text):
    """Builds the cluster of a TF_CONFIG JSON string.

    Returns:
        A `Cluster`, or None when TF_CONFIG names no cluster.

    Raises:
        ConfigError: if TF_CONFIG is malformed.
    """
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or not spec.get("cluster"):
        return None
    jobs = spec["cluster"]
    task = spec.get("task") or {}
    if not isinstance(jobs, dict) or set(jobs) - set(_TASK_TYPES):
        raise ConfigError("TF_CONFIG cluster may only hold 'chief' and 'worker' lists "
                          f"for multi-worker training; got {sorted(jobs)}")
    if not isinstance(task, dict):
        raise ConfigError("TF_CONFIG task must be an object with 'type' and 'index'")
    jobs = {kind: tuple(parse_host(str(h), "TF_CONFIG") for h in hosts)
            for kind, hosts in jobs.items()}
    _check_unique(sum(jobs.values(), ()), "TF_CONFIG")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in jobs:
        raise ConfigError(f"TF_CONFIG task type must be one of {', '.join(sorted(jobs))}; "
                          f"got {kind!r}")
    if not isinstance(index, int) or not 0 <= index < len(jobs[kind]):
        raise ConfigError(f"TF_CONFIG task index must be from 0 to {len(jobs[kind]) - 1}; "
                          f"got {index!r}")
    return Cluster(jobs, kind, index, "TF_CONFIG")


def _check_unique(hosts, what):
    seen = set()
    for host in hosts:
        if host in seen:
            raise ConfigError(f"{what}: {host} is listed twice")
        seen.add(host)


def find_cluster(worker_hosts=None, task_index=None, environ=None):
    """Returns the cluster this process belongs to, or None.

    `--worker-hosts` wins over a TF_CONFIG in the environment; a TF_CONFIG
    with a single process is no cluster.

    Raises:
        ConfigError: on bad flags or a malformed TF_CONFIG.
    """
    environ = os.environ if environ is None else environ
    if worker_hosts is not None:
        return from_flags(worker_hosts, task_index)
    if task_index is not None:
        raise ConfigError("--task-index needs --worker-hosts")
    if environ.get("TF_CONFIG"):
        cluster = from_tf_config(environ["TF_CONFIG"])
        if cluster is not None and cluster.size > 1:
            return cluster
    return None
