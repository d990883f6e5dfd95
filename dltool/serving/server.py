"""Running the app: load the versions, bind, serve on uvicorn, drain on SIGTERM.

Off loopback every request must carry the server's token (see `find_token`);
on loopback only when one is given, so TF Serving's clients work unchanged.
"""

import gc
import ipaddress
import signal
import socket

import uvicorn

from dltool.core import tokens
from dltool.core.errors import DltoolError, StorageError
from dltool.serving import app as app_lib
from dltool.serving import models

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501  # TF Serving's REST port
# Requests still running when SIGTERM comes get this long to finish.
DRAIN_TIMEOUT_S = 30
# One model call at a time by default: on 2 cores two at once kept the model
# busier (94-96% of the time against 72-73%, bench/serve.py's load at
# concurrency 32) but split the batches in two (mean 16-24 examples against
# 28-32), and served fewer requests: 817 and 863 req/s at concurrency 32
# against 887 and 956 with one, in runs side by side. More cores may differ.
DEFAULT_BATCH_THREADS = 1
# The token every request carries off loopback: `--token-file`, else this
# variable, else a new one written to saved_models/NAME/serve.token.
TOKEN_ENV = "DLTOOL_SERVE_TOKEN"
TOKEN_FILE = "serve.token"


def serve(project_dir, model=None, *, host=DEFAULT_HOST, port=DEFAULT_PORT, max_batch=32,
          batch_timeout_ms=2.0, batch_threads=DEFAULT_BATCH_THREADS, max_body_bytes=16 << 20,
          trusted=False, token_file=None, environ=None, echo=None, warn=None):
    """Serves a model's versions until SIGTERM or Ctrl-C, then drains and returns.

    Args:
        project_dir: The project folder, or None.
        model: See `models.find_versions`.
        host: The address to listen on; off loopback, requests must carry
            the token (see `find_token`) and a warning line says the API
            has no TLS.
        port: The port; 0 picks a free one (the line printed names it).
        max_batch: The most examples in one model call and in one request.
        batch_timeout_ms: How long a batch waits for more requests.
        batch_threads: The most model calls running at once (per version).
        max_body_bytes: The largest request body (413 past it).
        trusted: No warning for a SavedModel the project did not export
            (`--trusted`).
        token_file: A file holding the token requests must carry
            (`--token-file`), or None.
        environ: The environment (`DLTOOL_SERVE_TOKEN`); `os.environ` when None.
        echo: Function that prints a line for the user (the address once
            listening), or None.
        warn: Function that prints a warning line (a SavedModel the project
            did not export, a host that is not loopback), or None.

    Raises:
        DltoolError: nothing to serve, not a dltool export, an address that
            cannot be listened on, or a token that cannot be read or written.
    """
    echo = echo or (lambda line: None)
    warn = warn or (lambda line: None)
    name, folders = models.find_versions(project_dir, model)
    model_root = next(iter(folders.values())).parent
    token, token_source = find_token(host, model_root, token_file, environ)
    versions = {number: models.load_version(project_dir, number, folder,
                                            warn=None if trusted else warn)
                for number, folder in folders.items()}
    served = app_lib.ServedModel(name, versions, max_batch=max_batch,
                                 batch_timeout_s=batch_timeout_ms / 1000,
                                 max_body_bytes=max_body_bytes,
                                 batch_threads=batch_threads)
    sock = _listen(host, port)
    if not _is_loopback(host):
        warn(f"Warning: listening on {host}, reachable from other machines; requests "
             "need the token but travel unencrypted (no TLS): use a private network")
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    auth = "" if token is None else \
        f'; send "Authorization: Bearer TOKEN", the token in {token_source}'
    echo(f"Serving {name} (versions {', '.join(map(str, served.versions))}; default "
         f"{served.default_version}) on http://{shown_host}:{bound_port}/v1/models/{name}"
         f"{auth}")
    # No proxy-headers middleware: the app never reads the client's address,
    # and X-Forwarded-For from anyone is not to be trusted anyway.
    config = uvicorn.Config(app_lib.create_app(served, token=token), log_level="warning",
                            access_log=False, lifespan="on", loop="uvloop",
                            http="httptools", proxy_headers=False,
                            timeout_graceful_shutdown=DRAIN_TIMEOUT_S)
    # uvicorn drains on SIGTERM and Ctrl-C, then raises the signal again
    # under the handler it found: with these, a drained server returns (exit 0).
    previous = {signum: signal.signal(signum, lambda signum, frame: None)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    _freeze_loaded_objects()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        gc.unfreeze()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()


def _freeze_loaded_objects():
    """Keeps the objects made so far out of every garbage collection.

    TensorFlow, Keras and the loaded models are about 400,000 objects that
    live as long as the server; a full collection, which the requests'
    allocations trigger every few seconds under load, scanned them all
    while holding the GIL: 209 ms with every request and model call
    stalled, measured at concurrency 32 (p99 latency 205-416 ms against a
    p90 of 49-63 ms). Frozen, a collection scans only what came after
    (`gc.unfreeze` once the server returns).
    """
    gc.collect()
    gc.freeze()


def find_token(host, model_root, token_file=None, environ=None):
    """The token every request must carry, and where a client finds it.

    `token_file`, else `DLTOOL_SERVE_TOKEN`; else, off loopback, a new token
    written to `model_root/serve.token` (mode 0600, a new one at each
    start); else, on loopback, none.

    Args:
        host: The address the server listens on.
        model_root: The served model's folder (`saved_models/NAME`).
        token_file: The `--token-file` path, or None.
        environ: The environment; `os.environ` when None.

    Returns:
        A tuple `(token, where)`: `where` names the file or the variable;
        `(None, None)` on loopback without a token given.

    Raises:
        DltoolError: the file given cannot be read, or it or the variable
            holds no token.
        StorageError: the new token cannot be written.
    """
    made_by = f"as dltool serve writes to {TOKEN_FILE}"
    token = tokens.read_token(token_file, TOKEN_ENV, environ=environ, whose="the server's",
                              made_by=made_by)
    if token is not None:
        return token, token_file if token_file is not None else TOKEN_ENV
    if _is_loopback(host):
        return None, None
    path = model_root / TOKEN_FILE
    try:
        return tokens.write_token(path), path
    except OSError as e:
        raise StorageError(f"cannot write the server's token to {path}: "
                           f"{e.strerror or type(e).__name__}; give one with --token-file "
                           f"or {TOKEN_ENV}") from None


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
