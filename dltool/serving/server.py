"""Running the app: load the versions, bind, serve on uvicorn, drain on SIGTERM."""

import ipaddress
import signal
import socket

import uvicorn

from dltool.core.errors import DltoolError
from dltool.serving import app as app_lib
from dltool.serving import models

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501  # TF Serving's REST port
# Requests still running when SIGTERM comes get this long to finish.
DRAIN_TIMEOUT_S = 30


def serve(project_dir, model=None, *, host=DEFAULT_HOST, port=DEFAULT_PORT, max_batch=32,
          batch_timeout_ms=2.0, max_body_bytes=16 << 20, trusted=False, echo=None,
          warn=None):
    """Serves a model's versions until SIGTERM or Ctrl-C, then drains and returns.

    Args:
        project_dir: The project folder, or None.
        model: See `models.find_versions`.
        host: The address to listen on; a warning line when it is not a
            loopback address (the API has no authentication).
        port: The port; 0 picks a free one (the line printed names it).
        max_batch: The most examples in one model call and in one request.
        batch_timeout_ms: How long a batch waits for more requests.
        max_body_bytes: The largest request body (413 past it).
        trusted: No warning for a SavedModel the project did not export
            (`--trusted`).
        echo: Function that prints a line for the user (the address once
            listening), or None.
        warn: Function that prints a warning line (a SavedModel the project
            did not export, a host that is not loopback), or None.

    Raises:
        DltoolError: nothing to serve, not a dltool export, or an address
            that cannot be listened on.
    """
    echo = echo or (lambda line: None)
    warn = warn or (lambda line: None)
    name, folders = models.find_versions(project_dir, model)
    versions = {number: models.load_version(project_dir, number, folder,
                                            warn=None if trusted else warn)
                for number, folder in folders.items()}
    served = app_lib.ServedModel(name, versions, max_batch=max_batch,
                                 batch_timeout_s=batch_timeout_ms / 1000,
                                 max_body_bytes=max_body_bytes)
    sock = _listen(host, port)
    if not _is_loopback(host):
        warn(f"Warning: listening on {host}, reachable from other machines; "
             "dltool serve has no authentication or TLS")
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    echo(f"Serving {name} (versions {', '.join(map(str, served.versions))}; default "
         f"{served.default_version}) on http://{shown_host}:{bound_port}/v1/models/{name}")
    config = uvicorn.Config(app_lib.create_app(served), log_level="warning",
                            access_log=False, lifespan="on",
                            timeout_graceful_shutdown=DRAIN_TIMEOUT_S)
    # uvicorn drains on SIGTERM and Ctrl-C, then raises the signal again
    # under the handler it found: with these, a drained server returns (exit 0).
    previous = {signum: signal.signal(signum, lambda signum, frame: None)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()


def _listen(host, port):
    """A listening socket on `host:port`, so a taken port is one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except (OSError, UnicodeError) as e:
        raise DltoolError(f"cannot listen on {host}:{port}: "
                         f"{getattr(e, 'strerror', None) or e}") from None
    return sock


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
