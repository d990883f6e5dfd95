"""`dltool serve`: a real server process on 127.0.0.1 and a real HTTP client.

One server process per template (started together, shared by the module's
tests): the image classifier with two versions, sentiment, and a translator
served by folder path from outside its project (so it gets the untrusted
warning); and the image classifier again on 0.0.0.0, where every request
needs the token (its client still connects over 127.0.0.1). Every refused
request is checked for its status code and TF Serving's `{"error": ...}`
body, and the server is checked to keep serving and to log no traceback.
The batcher is tested on its own, without HTTP.
"""

import asyncio
import base64
import concurrent.futures
import http.client
import json
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, invoke
from dltool.core.errors import DltoolError
from dltool.serving import server as server_lib
from dltool.serving.batcher import Batcher

SAMPLES = REPO / "dltool" / "data" / "samples"
TEXT_MODEL = ("--set", "model.embedding_dim=16", "--set", "model.units=16",
              "--set", "training.verbose=0")
TRANSLATOR_MODEL = (*TEXT_MODEL, "--set", "data.source_vocabulary_size=400",
                    "--set", "data.target_vocabulary_size=400", "--set", "decoding.beam_width=2")
MAX_BATCH = 8
MAX_BODY = 300_000
START_TIMEOUT_S = 240


# The batcher alone ------------------------------------------------------------


def _run_requests(batcher, requests):
    """Submits every request at once on a fresh event loop; returns the outputs."""
    async def main():
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(r) for r in requests),
                                        return_exceptions=True)
        finally:
            await batcher.stop()
    return asyncio.run(main())


def test_batcher_groups_concurrent_requests_and_returns_each_its_rows():
    calls = []

    def double(examples):
        calls.append(len(examples))
        time.sleep(0.01)
        return {"twice": np.asarray(examples) * 2}

    requests = [list(range(start, start + size))
                for start, size in zip(range(0, 100, 10), [1, 3, 2, 1, 4, 1, 1, 2, 3, 1])]
    results = _run_requests(Batcher(double, max_batch=5, timeout_s=0.05), requests)
    assert [r["twice"].tolist() for r in results] == [[2 * x for x in r] for r in requests]
    assert sum(calls) == sum(map(len, requests))
    assert max(calls) <= 5 and len(calls) < len(requests)


def test_batcher_gives_the_error_only_to_the_request_the_model_refuses():
    def refuse_negative(examples):
        if any(x < 0 for x in examples):
            raise ValueError("negative input")
        return {"same": np.asarray(examples)}

    results = _run_requests(Batcher(refuse_negative, max_batch=8, timeout_s=0.05),
                            [[1, 2], [-1], [3]])
    assert results[0]["same"].tolist() == [1, 2] and results[2]["same"].tolist() == [3]
    assert isinstance(results[1], ValueError)


def test_batcher_runs_two_calls_at_once_with_two_threads():
    both_in = threading.Barrier(2, timeout=60)  # broken unless two calls meet inside

    def meet(examples):
        both_in.wait()
        return {"same": np.asarray(examples)}

    results = _run_requests(Batcher(meet, max_batch=1, timeout_s=0, threads=2), [[1], [2]])
    assert [r["same"].tolist() for r in results] == [[1], [2]]


def test_batcher_refuses_a_request_over_max_batch():
    results = _run_requests(Batcher(lambda e: {"x": np.asarray(e)}, max_batch=2, timeout_s=0),
                            [[1, 2, 3], []])
    assert all(isinstance(r, ValueError) for r in results)


# Servers --------------------------------------------------------------------


class Server:
    """A `dltool serve` process on 127.0.0.1, on a free port."""

    def __init__(self, args, cwd, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dltool.cli", "serve", "--port", "0", *map(str, args)],
            cwd=cwd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = None
        self.banner = None

    def wait_ready(self):
        """Reads stdout until the `Serving ... on http://...` line."""
        deadline = time.monotonic() + START_TIMEOUT_S
        for line in self.process.stdout:
            if line.startswith("Serving"):
                self.banner = line.strip()
                self.port = int(re.search(r"http://[^/]+:(\d+)/", line)[1])
                return self
            assert time.monotonic() < deadline
        pytest.fail(f"dltool serve exited {self.process.wait()}: {self.stderr()}")

    def stderr(self):
        self.log.flush()
        return Path(self.log_path).read_text()

    def request(self, method, path, body=None, headers=None):
        """One HTTP request to 127.0.0.1; returns `(status, parsed JSON body)`."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def predict(self, name, body, version=None, headers=None):
        where = f"/versions/{version}" if version else ""
        return self.request("POST", f"/v1/models/{name}{where}:predict", body, headers)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _small_tsv(source, target, lines):
    target.write_text("".join(source.read_text(encoding="utf-8").splitlines(True)[:lines]),
                      encoding="utf-8")
    return target


def _train(project, template, data, model_args):
    from click.testing import CliRunner

    runner = CliRunner()
    for args in (("new", template, project),
                 ("train", "--project", project, "--epochs", 1, "--set",
                  f"data.source={data}", *model_args),
                 ("export", "--project", project)):
        result = invoke(runner, *args)
        assert result.exit_code == 0, result.output
    return project


@pytest.fixture(scope="module")
def servers(trained_project, tmp_path_factory):
    """The three servers; each starts as soon as its model is exported, so
    they load while the next model trains."""
    root = tmp_path_factory.mktemp("serve")
    image = root / "images"
    shutil.copytree(trained_project, image, symlinks=True)
    versions = image / "saved_models" / "proj"
    shutil.copytree(versions / "1", versions / "2")  # a second export of the same run
    metadata = json.loads((versions / "2" / "dltool.json").read_text())
    (versions / "2" / "dltool.json").write_text(json.dumps({**metadata, "version": 2}))
    started = {"paths": {"image": image}}
    try:
        started["image"] = Server(["--project", image, "--max-batch", MAX_BATCH,
                                   "--batch-timeout-ms", 20, "--max-body-bytes", MAX_BODY],
                                  root, root / "image.log")
        started["guarded"] = Server(["--project", image, "--host", "0.0.0.0"], root,
                                    root / "guarded.log")
        text = started["paths"]["text"] = _train(
            root / "reviews", "sentiment",
            _small_tsv(SAMPLES / "sst2" / "train.tsv", root / "reviews.tsv", 301),
            (*TEXT_MODEL, "--set", "data.sequence_length=24"))
        # a long batch timeout keeps a request in flight for the shutdown test
        started["text"] = Server(["--project", text, "--batch-timeout-ms", 400], root,
                                 root / "text.log")
        translator = started["paths"]["translator"] = _train(
            root / "fr", "translator",
            _small_tsv(SAMPLES / "fra-eng" / "fra.txt", root / "pairs.tsv", 300),
            TRANSLATOR_MODEL)
        started["translator"] = Server([translator / "saved_models" / "fr"], root,
                                       root / "translator.log")
        for key in ("image", "guarded", "text", "translator"):
            started[key].wait_ready()
        yield started
    finally:
        for key in ("image", "guarded", "text", "translator"):
            if key in started:
                started[key].stop()


def _b64(data):
    return {"b64": base64.b64encode(data).decode()}


def _in_process(version_dir, inputs):
    """What the SavedModel returns called in this process."""
    from dltool._tf import tf
    from dltool.engine import modelfiles

    signature = modelfiles.load_saved_model(version_dir)
    (name,) = signature.structured_input_signature[1]
    return {k: v.numpy() for k, v in signature(**{name: tf.constant(inputs)}).items()}


def _jpegs(project):
    return [p.read_bytes() for p in sorted((project / "samples").glob("*.jpg"))]


def _png_header(width, height):
    """The start of a PNG whose header states `width` x `height`."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + \
        struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64


# The image classifier -------------------------------------------------------


@pytest.mark.slow
def test_image_predictions_are_the_saved_models_outputs(servers):
    server, project = servers["image"], servers["paths"]["image"]
    assert "on http://127.0.0.1:" in server.banner and "versions 1, 2; default 2" in server.banner
    jpegs = _jpegs(project)
    status, body = server.predict("proj", {"instances": [_b64(j) for j in jpegs]})
    assert status == 200, body
    expected = _in_process(project / "saved_models" / "proj" / "2", jpegs)
    assert len(body["predictions"]) == len(jpegs)
    assert set(body["predictions"][0]) == set(expected)
    for i, prediction in enumerate(body["predictions"]):
        assert prediction["label"] == expected["label"][i].decode()
        np.testing.assert_allclose(prediction["probabilities"], expected["probabilities"][i],
                                   rtol=1e-5, atol=1e-6)
    # columnar, with the input named: the same values, by output
    status, columns = server.predict("proj", {"inputs": {"images": [_b64(j) for j in jpegs]}})
    assert status == 200, columns
    assert columns["outputs"]["label"] == [p["label"] for p in body["predictions"]]
    assert "was not exported" not in server.stderr()  # the project's own export


@pytest.mark.slow
def test_versions_status_and_metadata(servers):
    server = servers["image"]
    status, body = server.request("GET", "/v1/models/proj")
    assert status == 200
    assert [v["version"] for v in body["model_version_status"]] == ["1", "2"]
    assert {v["state"] for v in body["model_version_status"]} == {"AVAILABLE"}
    status, body = server.request("GET", "/v1/models/proj/versions/1")
    assert status == 200 and [v["version"] for v in body["model_version_status"]] == ["1"]
    status, meta = server.request("GET", "/v1/models/proj/metadata")
    assert status == 200 and meta["model_spec"] == {"name": "proj", "signature_name": "",
                                                     "version": "2"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["images"]["dtype"] == "DT_STRING"
    assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["outputs"]["probabilities"]["tensor_shape"]["dim"]] \
        == ["-1", "10"]
    jpeg = _jpegs(servers["paths"]["image"])[0]
    status, body = server.predict("proj", {"instances": [_b64(jpeg)]}, version=1)
    assert status == 200 and len(body["predictions"]) == 1


def _bad_requests(jpeg):
    """(what, method, path, body, status, a fragment of the error)."""
    predict = "/v1/models/proj:predict"
    one = [_b64(jpeg)]
    return [
        ("malformed JSON", "POST", predict, b'{"instances": [', 400, "JSON Parse error"),
        ("not UTF-8", "POST", predict, b'{"instances": ["\xff\xfe"]}', 400, "JSON Parse error"),
        ("not an object", "POST", predict, b"[1, 2]", 400, "JSON object"),
        ("wrong key", "POST", predict, {"instancez": one}, 400, "unknown key 'instancez'"),
        ("both formats", "POST", predict, {"instances": one, "inputs": one}, 400,
         "exactly one of"),
        ("neither format", "POST", predict, {"signature_name": "serving_default"}, 400,
         "exactly one of"),
        ("instances not a list", "POST", predict, {"instances": "cat.jpg"}, 400,
         "must be a list"),
        ("a number", "POST", predict, {"instances": [123]}, 400, "expected a string"),
        ("a wrong input name", "POST", predict, {"inputs": {"pixels": one}}, 400,
         "the signature's input is 'images'"),
        ("undecodable b64", "POST", predict, {"instances": [{"b64": "no*base64"}]}, 400,
         "not valid base64"),
        ("not an image", "POST", predict, {"instances": [_b64(b"hello, world")]}, 400,
         "instance 0: not a JPEG, PNG, GIF or BMP image"),
        # A JPEG header over cut-off data: refused by the model's decoding,
        # in the op's own words (not "Graph execution error:").
        ("a corrupt JPEG", "POST", predict, {"instances": [_b64(jpeg[:300])]}, 400,
         "the model refused the input: jpeg::Uncompress failed"),
        ("over max_pixels", "POST", predict,
         {"instances": one + [_b64(_png_header(30000, 30000))]}, 400,
         "instance 1: 30000x30000, 900000000 pixels, over data.max_pixels"),
        ("empty body", "POST", predict, b"", 400, "empty request body"),
        ("oversize body", "POST", predict, b" " * (MAX_BODY + 1), 413, "over the limit"),
        ("no instances", "POST", predict, {"instances": []}, 400, "no instances"),
        ("too many instances", "POST", predict, {"instances": one * (MAX_BATCH + 1)}, 400,
         f"too many instances: {MAX_BATCH + 1}, at most {MAX_BATCH}"),
        ("other signature", "POST", predict, {"signature_name": "x", "instances": one}, 400,
         "'x' not found"),
        ("unknown model", "POST", "/v1/models/nope:predict", {"instances": one}, 404,
         "Servable not found for request: Latest(nope)"),
        ("unknown version", "POST", "/v1/models/proj/versions/9:predict", {"instances": one},
         404, "Specific(proj, 9)"),
        ("unknown model status", "GET", "/v1/models/nope", None, 404, "Servable not found"),
        ("unknown route", "GET", "/v2/everything", None, 404, "Not Found"),
        ("GET on predict", "GET", predict, None, 405, "Method not allowed"),
    ]


@pytest.mark.slow
def test_bad_requests_are_json_errors_and_the_server_keeps_serving(servers):
    server, project = servers["image"], servers["paths"]["image"]
    jpeg = _jpegs(project)[0]
    for what, method, path, body, status, fragment in _bad_requests(jpeg):
        got, answer = server.request(method, path, body)
        assert (got, list(answer)) == (status, ["error"]), what
        assert fragment in answer["error"], (what, answer)
        assert "\n" not in answer["error"], what
    assert server.process.poll() is None
    status, body = server.predict("proj", {"instances": [_b64(jpeg)]})
    assert status == 200 and len(body["predictions"]) == 1
    assert "Traceback" not in server.stderr()


@pytest.mark.slow
def test_concurrent_requests_are_answered_correctly_and_batched(servers):
    server, project = servers["image"], servers["paths"]["image"]
    jpegs = _jpegs(project)
    _, before = server.request("GET", "/v1/models/proj/metadata")
    requests = [jpegs[i % len(jpegs)] for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda j: server.predict("proj", {"instances": [_b64(j)]}),
                                requests))
    expected = _in_process(project / "saved_models" / "proj" / "2", jpegs)
    for i, (status, body) in enumerate(answers):
        assert status == 200, body
        assert body["predictions"][0]["label"] == expected["label"][i % len(jpegs)].decode()
    _, after = server.request("GET", "/v1/models/proj/metadata")
    old, new = (m["metadata"]["dltool"]["batching"] for m in (before, after))
    assert new["requests"] - old["requests"] == len(requests)
    assert new["examples"] - old["examples"] == len(requests)
    assert new["batches"] - old["batches"] < len(requests)  # grouped into fewer calls
    assert 1 < new["largest"] <= MAX_BATCH


# The token ------------------------------------------------------------------


@pytest.mark.slow
def test_off_loopback_every_request_needs_the_token(servers):
    server, project = servers["guarded"], servers["paths"]["image"]
    path = project / "saved_models" / "proj" / server_lib.TOKEN_FILE
    assert server.banner.endswith(f'send "Authorization: Bearer TOKEN", the token in {path}')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    body = {"instances": [_b64(_jpegs(project)[0])]}
    for headers, error in (({}, 'send the header "Authorization: Bearer TOKEN"'),
                           ({"Authorization": f"Bearer {token}x"}, "wrong token"),
                           ({"Authorization": token}, "wrong token")):
        status, answer = server.predict("proj", body, headers=headers)
        assert (status, list(answer)) == (401, ["error"]) and error in answer["error"]
        status, answer = server.request("GET", "/v2/everything", headers=headers)
        assert status == 401  # before routing: nothing is told without the token
    status, answer = server.predict("proj", body, headers={"Authorization": f"Bearer {token}"})
    assert status == 200 and len(answer["predictions"]) == 1
    assert "Traceback" not in server.stderr()


def test_the_token_is_given_else_made_off_loopback_only(tmp_path):
    given = tmp_path / "given.token"
    given.write_text("from-the-file\n")
    environ = {server_lib.TOKEN_ENV: "from-the-environment"}
    assert server_lib.find_token("127.0.0.1", tmp_path, None, {}) == (None, None)
    assert server_lib.find_token("127.0.0.1", tmp_path, given, environ) == \
        ("from-the-file", given)  # on loopback too, when given
    assert server_lib.find_token("::1", tmp_path, None, environ) == \
        ("from-the-environment", server_lib.TOKEN_ENV)
    token, where = server_lib.find_token("0.0.0.0", tmp_path, None, {})
    assert where == tmp_path / server_lib.TOKEN_FILE and where.read_text() == token + "\n"
    assert stat.S_IMODE(where.stat().st_mode) == 0o600
    given.write_text("two words\n")
    with pytest.raises(DltoolError, match="given.token holds no token"):
        server_lib.find_token("0.0.0.0", tmp_path, given, {})
    with pytest.raises(DltoolError, match="cannot read the server's token from .*nope"):
        server_lib.find_token("127.0.0.1", tmp_path, tmp_path / "nope", {})


# The text templates ---------------------------------------------------------


@pytest.mark.slow
def test_sentiment_takes_strings_and_b64(servers):
    server, project = servers["text"], servers["paths"]["text"]
    texts = ["a gripping, funny film", "dull and far too long", "Très émouvant 😀"]
    status, body = server.predict("reviews", {"instances": texts[:2] + [_b64(texts[2].encode())]})
    assert status == 200, body
    expected = _in_process(project / "saved_models" / "reviews" / "1",
                           [t.encode() for t in texts])
    assert [p["label"] for p in body["predictions"]] == [x.decode() for x in expected["label"]]
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], expected["score"],
                               rtol=1e-5)
    status, body = server.predict("reviews", {"instances": [{"texts": texts[0]}]})
    assert status == 200 and body["predictions"][0]["label"] == expected["label"][0].decode()


@pytest.mark.slow
def test_translator_served_by_path_warns_and_translates(servers):
    server, project = servers["translator"], servers["paths"]["translator"]
    assert "was not exported from this project" in server.stderr()
    sentences = ["How are you?", "I am tired."]
    status, body = server.predict("fr", {"inputs": sentences})
    assert status == 200, body
    expected = _in_process(project / "saved_models" / "fr" / "1", sentences)
    assert body["outputs"]["translation"] == [t.decode() for t in expected["translation"]]
    assert body["outputs"]["truncated"] == expected["truncated"].tolist()


@pytest.mark.slow
def test_sigterm_drains_the_requests_in_flight_and_exits_0(servers):
    server = servers["text"]
    answers = []
    thread = threading.Thread(target=lambda: answers.append(
        server.predict("reviews", {"instances": ["still answered"]})))
    thread.start()
    time.sleep(0.15)  # the request now waits in the 400 ms batch window
    server.process.send_signal(signal.SIGTERM)
    thread.join(60)
    assert answers and answers[0][0] == 200 and len(answers[0][1]["predictions"]) == 1
    assert server.process.wait(60) == 0
    assert "Traceback" not in server.stderr()


# Refusals at start ----------------------------------------------------------


def test_serve_before_any_export_is_one_line(runner, project):
    result = invoke(runner, "serve", "--project", project)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == \
        ["Error: nothing exported yet: run `dltool export` first"]


@pytest.mark.slow
def test_a_port_in_use_is_one_line(runner, servers):
    server = servers["image"]
    result = invoke(runner, "serve", "--project", servers["paths"]["image"], "--port",
                    server.port)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == \
        f"Error: cannot listen on 127.0.0.1:{server.port}: Address already in use"
