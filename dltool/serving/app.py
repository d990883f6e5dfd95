"""The Starlette application: TensorFlow Serving's REST API over dltool exports.

Routes (TF Serving's), VERSION optional (the highest one by default):

* `POST /v1/models/NAME[/versions/VERSION]:predict`: `{"instances": [...]}`
  (row format) answered with `{"predictions": [...]}`, or `{"inputs": ...}`
  (columnar) answered with `{"outputs": ...}`. An input is a string, or
  `{"b64": "..."}` for bytes (an image); an instance may also be
  `{"INPUT_NAME": value}`.
* `GET /v1/models/NAME[/versions/VERSION]`: the versions' status.
* `GET /v1/models/NAME[/versions/VERSION]/metadata`: the signature, plus
  dltool's own entry (`metadata.dltool`: template and batching counters).

Every refused request gets `{"error": "..."}` with its status code (400 bad
request, 401 no token or a wrong one, 404 unknown model, version or route,
405 wrong method, 413 body over the limit) and is logged as one line at
most; the server keeps serving.

With a token (`create_app(served, token=...)`), every request, whatever its
route, must carry `Authorization: Bearer TOKEN`.
"""

import base64
import binascii
import contextlib
import hmac
import json
import logging
import re

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from dltool._tf import tf
from dltool.core.errors import op_message
from dltool.serving import models
from dltool.serving.batcher import Batcher

logger = logging.getLogger("dltool.serve")

_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?P<verb>:predict|/metadata)?")


class RequestError(Exception):
    """A request refused with `status` and a one-line `message`."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class ServedModel:
    """The versions of one model, as the app serves them.

    Args:
        name: The model name in the URLs.
        versions: Version number to `models.LoadedVersion`.
        max_batch: The most examples in one model call, and in one request.
        batch_timeout_s: How long a batch waits for more requests.
        max_body_bytes: The largest request body accepted.
        batch_threads: The most model calls running at once, per version.
    """

    def __init__(self, name, versions, *, max_batch, batch_timeout_s, max_body_bytes,
                 batch_threads=1):
        self.name = name
        self.versions = dict(sorted(versions.items()))
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        for version in self.versions.values():
            version.batcher = Batcher(_as_lists(version.serve), max_batch=max_batch,
                                      timeout_s=batch_timeout_s, threads=batch_threads)

    @property
    def default_version(self):
        """The number of the version served when a URL names none: the highest."""
        return max(self.versions)

    def find(self, name, version):
        """The version a URL names.

        Raises:
            RequestError: 404 for another model or a version not served.
        """
        wanted = f"Specific({name}, {version})" if version else f"Latest({name})"
        if name != self.name:
            raise RequestError(404, f"Servable not found for request: {wanted}")
        if version is None:
            return self.versions[self.default_version]
        if not version.isdigit() or int(version) not in self.versions:
            raise RequestError(404, f"Servable not found for request: {wanted}")
        return self.versions[int(version)]


def create_app(served, token=None):
    """Returns the ASGI application serving `served` (a `ServedModel`).

    Args:
        served: The `ServedModel`.
        token: The token every request must carry as `Authorization: Bearer
            TOKEN`, or None for none.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for version in served.versions.values():
            version.batcher.start()
        yield
        for version in served.versions.values():
            await version.batcher.stop()

    async def endpoint(request):
        status, content = await _answer(
            served, request.method, request.url.path,
            lambda: _read_body(request.headers.get("content-length", ""), request.stream(),
                               served.max_body_bytes))
        return _json(status, content)

    async def http_error(request, exc):
        return _json(exc.status_code, {"error": exc.detail})

    app = Starlette(routes=[Route("/v1/models/{rest:path}", endpoint, methods=["GET", "POST"])],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app = _predict_first(app, served)
    return app if token is None else _require_token(app, token)


def _predict_first(app, served):
    """`app` with `POST ...:predict` answered before Starlette's layers.

    The predict requests are the load; every other request goes through
    Starlette (routing, 404 and 405, lifespan). The answer is the same
    `_answer` either way: only Starlette's per-request objects (its
    middleware, `Request`, routing and `Response`) are skipped. They took
    about half the CPU time of a predict request: 193 us against 104 us
    without them (the app called in process, 32 requests at a time, the
    model replaced by constant outputs; medians of 5 rounds side by side,
    on a loaded 2-core machine). Under load, the event loop's work on one
    batch's requests is time the model waits for the next batch.
    """
    async def asgi(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" \
                or not scope["path"].endswith(":predict"):
            await app(scope, receive, send)
            return
        declared = next((value.decode("latin-1") for name, value in scope["headers"]
                         if name == b"content-length"), "")
        try:
            status, content = await _answer(
                served, "POST", scope["path"],
                lambda: _read_body(declared, _chunks(receive), served.max_body_bytes))
        except _Disconnected:  # the client is gone: no one to answer
            return
        body = _dumps(content)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode("ascii")),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return asgi


class _Disconnected(Exception):
    """The client went away before its request body was read."""


async def _chunks(receive):
    """The request body's chunks, from ASGI `http.request` messages."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _require_token(app, token):
    """`app` answering 401 to an HTTP request without `Authorization: Bearer
    token` (compared in constant time), before any routing or body read."""
    expected = f"Bearer {token}".encode("ascii")

    async def checked(scope, receive, send):
        if scope["type"] == "http":
            given = next((value for name, value in scope["headers"]
                          if name == b"authorization"), None)
            if given is None or not hmac.compare_digest(given, expected):
                message = "Unauthorized: wrong token" if given is not None else \
                    "Unauthorized: send the header \"Authorization: Bearer TOKEN\" with " \
                    "the server's token"
                refusal = _json(401, {"error": message})
                refusal.headers["www-authenticate"] = "Bearer"
                await refusal(scope, receive, send)
                return
        await app(scope, receive, send)

    return checked


async def _answer(served, method, path, read_body):
    """Answers one request: `(status, JSON content)`, an error as
    `{"error": "..."}` (one line logged for a 500, never a traceback).

    Args:
        served: The `ServedModel`.
        method: The HTTP method.
        path: The URL path.
        read_body: Returns (a coroutine of) the request's body, refused past
            the limit (`_read_body`).
    """
    try:
        return 200, await _handle(served, method, path, read_body)
    except RequestError as e:
        return e.status, {"error": e.message}
    except _Disconnected:
        raise
    except Exception as e:  # a bug or the model failing: one line, never a traceback
        message = _first_line(e)
        logger.error("%s %s: %s", method, path, message)
        return 500, {"error": message}


async def _handle(served, method, path, read_body):
    """The content of the answer to one request (see the module's docstring).

    Raises:
        RequestError: the request is refused.
    """
    match = _PATH.fullmatch(path)
    if match is None:
        raise RequestError(404, f"Malformed request: {method} {path}")
    verb = match["verb"]
    if (verb == ":predict") != (method == "POST"):
        raise RequestError(405, f"Method not allowed: {method} {path}")
    version = served.find(match["name"], match["version"])
    if verb == ":predict":
        return await _predict(served, version, _parse_json(await read_body()))
    if verb == "/metadata":
        return _metadata(served, version)
    shown = served.versions.values() if match["version"] is None else [version]
    return {"model_version_status": [
        {"version": str(v.number), "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}} for v in shown]}


async def _read_body(declared, chunks, limit):
    """The request's body, refused past `limit` bytes without reading it all.

    Args:
        declared: Its `Content-Length` header, or "".
        chunks: An async iterator of the body's chunks.
        limit: The most bytes accepted.
    """
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes is over the limit of "
                                f"{limit} (--max-body-bytes)")
    size, parts = 0, []
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes "
                                    "(--max-body-bytes)")
        parts.append(chunk)
    if not size:
        raise RequestError(400, "empty request body: send JSON with \"instances\" or "
                                "\"inputs\"")
    return b"".join(parts)


def _parse_json(body):
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise RequestError(400, f"JSON Parse error: {_first_line(e)}") from None


async def _predict(served, version, request):
    """Runs a predict request through the version's batcher."""
    if not isinstance(request, dict):
        raise RequestError(400, "request must be a JSON object with \"instances\" or "
                                "\"inputs\"")
    unknown = sorted(set(request) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise RequestError(400, f"unknown key {unknown[0]!r} in the request (allowed: "
                                "instances or inputs, signature_name)")
    signature = request.get("signature_name", models.SIGNATURE)
    if signature != models.SIGNATURE:
        raise RequestError(400, f"Serving signature name: {signature!r} not found in "
                                f"signature def (served: {models.SIGNATURE})")
    if ("instances" in request) == ("inputs" in request):
        raise RequestError(400, "request needs exactly one of \"instances\" (row format) "
                                "or \"inputs\" (columnar format)")
    row_format = "instances" in request
    examples = _examples(request["instances"] if row_format else request["inputs"],
                         version.input_name, row_format)
    if not examples:
        raise RequestError(400, "no instances in the request")
    if len(examples) > served.max_batch:
        raise RequestError(400, f"too many instances: {len(examples)}, at most "
                                f"{served.max_batch} per request (--max-batch)")
    for index, example in enumerate(examples):
        reason = version.check_input(example)
        if reason is not None:
            raise RequestError(400, f"instance {index}: {reason}")
    try:
        outputs = await version.batcher.submit(examples)
    except (tf.errors.InvalidArgumentError, ValueError) as e:  # e.g. corrupt image data
        raise RequestError(400, "the model refused the input: "
                                f"{op_message(getattr(e, 'message', str(e)))}") from None
    return _response(outputs, row_format, len(examples))


def _examples(value, input_name, row_format):
    """The raw inputs (bytes) of a request's `instances` or `inputs`."""
    key = "instances" if row_format else "inputs"
    if isinstance(value, dict) and set(value) != {"b64"}:  # {"INPUT_NAME": ...}
        if set(value) != {input_name}:
            raise RequestError(400, f"\"{key}\" names {sorted(value)}; the signature's "
                                    f"input is {input_name!r}")
        value = value[input_name]
    if not isinstance(value, list):
        raise RequestError(400, f"\"{key}\" must be a list of inputs")
    examples = []
    for index, item in enumerate(value):
        if row_format and isinstance(item, dict) and set(item) == {input_name}:
            item = item[input_name]
        examples.append(_raw_input(item, f"instance {index}"))
    return examples


def _raw_input(item, where):
    """One input as bytes: a JSON string (UTF-8) or `{"b64": "..."}`."""
    if isinstance(item, str):
        return item.encode("utf-8", errors="surrogatepass")
    if isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"{where}: \"b64\" is not valid base64") from None
    raise RequestError(400, f"{where}: expected a string or {{\"b64\": \"...\"}}, got "
                            f"{type(item).__name__ if not isinstance(item, dict) else 'an object'}"
                            f" ({json.dumps(item)[:60]})")


def _as_lists(serve):
    """`serve` with its outputs as JSON values (lists), made once per batch.

    The batcher then hands each request slices of these lists: converting a
    whole batch costs about what one request's rows did (`np.vectorize` and
    `tolist` are mostly per-call overhead), so this is a per-batch cost
    instead of a per-request one on the event loop (31 us a request before,
    timed in a loop, for the image classifier's four outputs).
    """
    def serve_lists(batch):
        return {name: _jsonable(np.asarray(rows)) for name, rows in serve(batch).items()}
    return serve_lists


def _response(values, row_format, count):
    """TF Serving's response: `predictions` (one entry per instance: the
    outputs by name, or the value when the signature has one output) or
    `outputs` (the columns).

    Args:
        values: Output name to the request's rows, as JSON values.
        row_format: `predictions` (True) or `outputs`.
        count: The request's instances.
    """
    if not row_format:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{name: column[i] for name, column in values.items()}
                            for i in range(count)]}


def _jsonable(array):
    """A numpy array as JSON values; strings decoded from UTF-8."""
    if array.dtype.kind in "SO":
        return np.vectorize(_text, otypes=[object])(array).tolist() if array.size else \
            array.tolist()
    return array.tolist()


def _text(value):
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _metadata(served, version):
    return {"model_spec": {"name": served.name, "signature_name": "",
                           "version": str(version.number)},
            "metadata": {"signature_def": {"signature_def": version.signature_def()},
                         "dltool": {"template": version.template,
                                    "max_batch": served.max_batch,
                                    "batching": version.batcher.stats.as_dict()}}}


def _json(status, content):
    return Response(_dumps(content), status, media_type="application/json")


def _dumps(content):
    """A response's JSON body, UTF-8 (NaN and infinities as JavaScript writes them)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=True).encode("utf-8")


def _first_line(error):
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
