"""The Open Inference Protocol endpoint, through Triton's own HTTP client against a real server
on loopback: results equal sample()'s on the same image and seed, in binary and in JSON, and
every refusal is the status and JSON error body the protocol's clients expect."""
import http.client
import json
import logging
import re
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import ldseg_rt
from ldseg_rt import Segmenter
from ldseg_rt.errors import InvalidImageError
from ldseg_rt.io.cases import find_cases
from ldseg_rt.io.images import read_image, write_png
from ldseg_rt.options import SampleOptions, SegmentOptions
from ldseg_rt.serve.oip.routes import create_app
from ldseg_rt.serve.oip.server import HttpServer
from ldseg_rt.serve.prometheus import Metrics
from ldseg_rt.serve.work import WorkQueue
from ldseg_rt.workflow import run_case

MODEL = "phantom"
SERVER_N = 3  # the server's default n, distinct from the n requests set
SHAPE = (37, 53)
OUTPUTS = ("MASK", "PROBS", "UNCERTAINTY")  # what a request that lists none gets
DTYPES = {"FP32": np.float32, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16}
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter("builtin:phantom")


@contextmanager
def serving(segmenter, capacity=4, options=SampleOptions(n=SERVER_N), **settings):
    """A server on a free loopback port with its own queue and metrics; stopped on exit."""
    work, metrics = WorkQueue(capacity), Metrics()
    server = HttpServer(create_app(segmenter, work, metrics, options=options, **settings), "127.0.0.1", 0)
    port = server.start()
    try:
        yield SimpleNamespace(port=port, work=work, metrics=metrics,
                              client=triton.InferenceServerClient(url=f"127.0.0.1:{port}"))
    finally:
        server.stop()
        work.close()


@pytest.fixture(scope="module")
def served(segmenter):
    with serving(segmenter) as s:
        yield s


def image(dtype=np.float32, shape=SHAPE, seed=0) -> np.ndarray:
    """Random intensities over the dtype's range (the whole of [0, 1] for floats)."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.random(shape).astype(dtype)


def infer_input(img: np.ndarray, binary: bool = True, name: str = "IMAGE", datatype: str | None = None):
    tensor = triton.InferInput(name, list(img.shape), datatype or next(k for k, v in DTYPES.items() if v == img.dtype))
    tensor.set_data_from_numpy(img, binary_data=binary)
    return tensor


def raw(port: int, method: str, path: str, body=None, headers=None) -> tuple[int, dict, dict | str]:
    """A request through http.client: status, headers (lower-case names), body (parsed when JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        headers, body = {k.lower(): v for k, v in response.getheaders()}, response.read()
        return response.status, headers, json.loads(body) if "json" in headers["content-type"] else body.decode()
    finally:
        conn.close()


def with_binary(header: dict, data: bytes) -> tuple[dict, bytes]:
    """HTTP headers and body of a request in the binary tensor data extension."""
    text = json.dumps(header).encode()
    return {"Inference-Header-Content-Length": str(len(text))}, text + data


def counted(s, outcome: str) -> float:
    """How many infer requests /metrics counts with this outcome."""
    status, _, text = raw(s.port, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    match = re.search(rf'^ldseg_requests_total{{door="http",outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


# --- metadata and readiness ---

def test_metadata_and_readiness_follow_the_model(served, segmenter):
    client, config = served.client, segmenter.config
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("other") and not client.is_model_ready(MODEL, "2")
    assert client.get_server_metadata() == {"name": "ldseg_rt", "version": ldseg_rt.__version__,
                                            "extensions": ["binary_tensor_data"]}
    meta = client.get_model_metadata(MODEL)
    assert meta == client.get_model_metadata(MODEL, "1")
    assert (meta["name"], meta["versions"], meta["platform"]) == (MODEL, ["1"], f"ldseg_rt_{config.family}")
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "FP32", "shape": [-1, -1]}]  # phantom: 1 channel
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs == {"MASK": ("UINT8", [-1, -1]), "PROBS": ("FP32", [config.num_classes, -1, -1]),
                       "UNCERTAINTY": ("FP32", [-1, -1]), "SAMPLES": ("UINT8", [-1, -1, -1])}
    assert refused(lambda: client.get_model_metadata("other")).status() == "404"


def test_readiness_follows_the_queue(segmenter):
    with serving(segmenter) as s:
        s.work.close()
        assert s.client.is_server_live() and not s.client.is_server_ready() and not s.client.is_model_ready(MODEL)


# --- results ---

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype, channel_axis", [("FP32", False), ("UINT8", True), ("INT16", False),
                                                    ("UINT16", True)])
def test_outputs_equal_sample_on_the_same_image(served, segmenter, datatype, channel_axis, binary):
    img = image(DTYPES[datatype], SHAPE + (1,) * channel_axis, seed=len(datatype))
    expected = segmenter.sample(img, n=2, steps=2, seed=11)
    if binary:  # the client's defaults: binary input, no outputs listed -> the default three, binary
        outputs = None
    else:  # JSON input; outputs listed, one of them binary: both encodings in one response
        outputs = [triton.InferRequestedOutput(name, binary_data=name == "UNCERTAINTY")
                   for name in ("MASK", "PROBS", "UNCERTAINTY", "SAMPLES")]
    result = served.client.infer(MODEL, [infer_input(img, binary)], outputs=outputs,
                                 parameters={"n": 2, "steps": 2, "seed": 11})
    for name in OUTPUTS + (() if binary else ("SAMPLES",)):
        np.testing.assert_array_equal(result.as_numpy(name), getattr(expected, name.lower()), err_msg=name)
        assert ("data" in result.get_output(name)) == (not binary and name != "UNCERTAINTY"), name
    assert result.as_numpy("MASK").dtype == np.uint8 and result.as_numpy("PROBS").dtype == np.float32
    if binary:
        assert result.get_output("SAMPLES") is None  # only on request
    response = result.get_response()
    assert (response["model_name"], response["model_version"]) == (MODEL, "1")
    assert response["parameters"] == {"seed": 11, "n": 2, "steps": 2}


def test_defaults_and_a_drawn_seed_reproduce(served, segmenter):
    img = image(seed=5)
    result = served.client.infer(MODEL, [infer_input(img)], request_id="req-42")
    response = result.get_response()
    assert response["id"] == "req-42"
    params = response["parameters"]
    assert (params["n"], params["steps"]) == (SERVER_N, segmenter.config.steps)
    again = segmenter.sample(img, n=SERVER_N, seed=params["seed"])
    np.testing.assert_array_equal(result.as_numpy("MASK"), again.mask)
    np.testing.assert_array_equal(result.as_numpy("PROBS"), again.probs)
    other = served.client.infer(MODEL, [infer_input(img)], parameters={"n": 2, "steps": 2})
    assert other.get_response()["parameters"]["seed"] != params["seed"]  # drawn afresh each time (2**-63 to fail)


def test_the_app_options_are_what_a_request_does_not_say(segmenter):
    img = image(seed=17)
    with serving(segmenter, options=SampleOptions(n=3, steps=2, seed=5)) as s:
        result = s.client.infer(MODEL, [infer_input(img)])
    assert result.get_response()["parameters"] == {"seed": 5, "n": 3, "steps": 2}
    expected = segmenter.sample(img, n=3, steps=2, seed=5)
    for name in OUTPUTS:
        np.testing.assert_array_equal(result.as_numpy(name), getattr(expected, name.lower()), err_msg=name)


def test_auto_n_stops_at_the_servers_bound_and_reports_the_n_that_reproduces(segmenter):
    img = image(seed=23)
    with serving(segmenter, max_n=5) as s:
        result = s.client.infer(MODEL, [infer_input(img)], parameters={"n": "auto", "seed": 9})
    params = result.get_response()["parameters"]
    assert params["n"] == 5  # the built-in model settles after 8 at the earliest: the bound stopped it
    again = segmenter.sample(img, n=params["n"], seed=9)
    np.testing.assert_array_equal(result.as_numpy("PROBS"), again.probs)


def test_the_same_bytes_as_segment_writes_for_the_case(served, segmenter, tmp_path):
    """One image, n, steps and seed: the endpoint's outputs are, byte for byte, the arrays that
    the per-case workflow (`segment`, the Ray actors, the DICOM node) writes for it."""
    path = tmp_path / "case.png"
    write_png(path, image(np.uint8, seed=13))
    options = SegmentOptions(n=2, steps=2, seed=21, formats=("npy",))
    outcome = run_case(segmenter, find_cases([path])[0], tmp_path / "out", options, model="builtin:phantom")
    assert outcome.status == "ok", outcome.detail
    result = served.client.infer(MODEL, [infer_input(read_image(path))], parameters={"n": 2, "steps": 2, "seed": 21})
    for name in OUTPUTS:
        written, sent = np.load(tmp_path / "out" / f"{name.lower()}.npy"), result.as_numpy(name)
        assert (sent.dtype, sent.shape) == (written.dtype, written.shape), name
        assert sent.tobytes() == written.tobytes(), name


def test_versioned_path_and_reserved_parameters(served, segmenter):
    img = image(np.uint8, seed=9)
    expected = segmenter.sample(img, n=2, steps=2, seed=3)
    result = served.client.infer(MODEL, [infer_input(img)], model_version="1", priority=1, timeout=10 ** 6,
                                 outputs=[triton.InferRequestedOutput("MASK")],
                                 parameters={"n": 2, "steps": 2, "seed": 3})
    np.testing.assert_array_equal(result.as_numpy("MASK"), expected.mask)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["MASK"]


def test_nested_json_data(served, segmenter):
    img = image(np.int16, (9, 11), seed=2)
    body = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "INT16", "shape": [9, 11], "data": img.tolist()}],
                       "outputs": [{"name": "MASK"}], "parameters": {"n": 2, "steps": 2, "seed": 4}})
    status, headers, response = raw(served.port, "POST", f"/v2/models/{MODEL}/infer", body)
    assert status == 200 and "inference-header-content-length" not in headers
    mask = response["outputs"][0]
    assert (mask["datatype"], mask["shape"]) == ("UINT8", [9, 11])
    np.testing.assert_array_equal(np.array(mask["data"]).reshape(9, 11),
                                  segmenter.sample(img, n=2, steps=2, seed=4).mask)


def test_each_request_is_logged_and_counted(segmenter, caplog):
    with serving(segmenter) as s, caplog.at_level(logging.INFO, logger="ldseg_rt.serve.oip"):
        s.client.infer(MODEL, [infer_input(image())], request_id="log-me", parameters={"n": 2, "steps": 2, "seed": 8})
        refused(lambda: s.client.infer(MODEL, [infer_input(np.full(SHAPE, np.nan, np.float32))]))
        refused(lambda: s.client.infer("other", [infer_input(image())]))
        assert [counted(s, o) for o in ("ok", "invalid", "not_found")] == [1, 1, 1]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("infer ")]
    assert len(lines) == 3
    for field in ("id='log-me'", "shape=(37, 53)", "dtype='float32'", "n=2", "steps=2", "seed=8", "outcome=ok",
                  "status=200", "queue_ms="):
        assert field in lines[0], field
    assert "outcome=invalid" in lines[1] and "status=400" in lines[1]
    assert "outcome=not_found" in lines[2] and "status=404" in lines[2]


# --- refusals ---

def test_library_errors_are_400_with_the_library_message(served, segmenter):
    nan = image()
    nan[3, 4] = np.nan
    with pytest.raises(InvalidImageError) as direct:
        segmenter.sample(nan, n=2, steps=2)
    error = refused(lambda: served.client.infer(MODEL, [infer_input(nan)], parameters={"n": 2, "steps": 2}))
    assert error.status() == "400" and str(direct.value) in error.message()
    for n in (2.5, True):
        error = refused(lambda: served.client.infer(MODEL, [infer_input(image())], parameters={"n": n}))
        assert error.status() == "400" and f"n must be a positive integer, got {n!r}" in error.message()


@pytest.mark.parametrize("kwargs, status, words", [
    ({"parameters": {"n": 2, "colour": "red"}}, "400", "'colour'"),
    ({"parameters": {"n": 129}}, "400", "n=129 is more samples than this server gives one request (at most 128)"),
    ({"outputs": [triton.InferRequestedOutput("LOGITS")]}, "400", "'LOGITS'"),
    ({"inputs": "INPUT0"}, "400", "'INPUT0'"),
    ({"inputs": "INT32"}, "400", "INT32"),
    ({"model_name": "other"}, "404", "'other'"),
    ({"model_version": "2"}, "404", "version '2'"),
])
def test_bad_requests_are_refused_by_name(served, kwargs, status, words):
    kwargs = dict(kwargs)
    model = kwargs.pop("model_name", MODEL)
    which = kwargs.pop("inputs", None)
    tensor = {None: infer_input(image()), "INPUT0": infer_input(image(), name="INPUT0"),
              "INT32": infer_input(image(np.int32), datatype="INT32")}[which]
    error = refused(lambda: served.client.infer(model, [tensor], **kwargs))
    assert error.status() == status and words in error.message()


@pytest.mark.parametrize("header, body, words", [
    ({}, b"{not json", "not valid JSON"),
    ({}, b'{"inputs": []}', "no inputs"),
    ({"Inference-Header-Content-Length": "99999"}, b"{}", "Inference-Header-Content-Length"),
    ({}, json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}), "BYTES"),
    ({}, json.dumps({"inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}]}),
     "needs 4 values"),
    ({}, json.dumps({"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [2], "data": [1, 300]}]}),
     "outside [0, 255]"),
    ({}, json.dumps({"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [2], "data": [1, 2.5]}]}),
     "integers"),
    (*with_binary({"inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [2, 2],
                               "parameters": {"binary_data_size": 16}}]}, bytes(8)), "runs past the end"),
    (*with_binary({"inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [2, 2],
                               "parameters": {"binary_data_size": 12}}]}, bytes(12)), "takes 16 bytes"),
    (*with_binary({"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [2, 2],
                               "parameters": {"binary_data_size": 4}}]}, bytes(5)), "5 bytes follow"),
])
def test_malformed_bodies_are_400(served, header, body, words):
    status, _, response = raw(served.port, "POST", f"/v2/models/{MODEL}/infer", body, header)
    assert status == 400 and words in response["error"], response


def test_unknown_paths_methods_and_encodings_answer_in_json(served):
    assert raw(served.port, "GET", "/v3/nothing")[0::2] == (404, {"error": "Not Found"})
    status, headers, body = raw(served.port, "GET", f"/v2/models/{MODEL}/infer")
    assert status == 405 and "POST" in headers["allow"] and set(body) == {"error"}
    status, _, body = raw(served.port, "POST", f"/v2/models/{MODEL}/infer", b"x", {"Content-Encoding": "gzip"})
    assert status == 415 and "compressed" in body["error"]


def test_a_token_guards_everything_but_health(segmenter):
    with serving(segmenter, token=TOKEN) as s:
        args = (MODEL, [infer_input(image())])
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            error = refused(lambda: s.client.infer(*args, headers=headers))
            assert error.status() == "401" and "bearer token" in error.message()
        assert refused(lambda: s.client.get_model_metadata(MODEL)).status() == "401"
        assert refused(lambda: s.client.get_server_metadata()).status() == "401"
        status, headers, body = raw(s.port, "GET", "/metrics")
        assert status == 401 and headers["www-authenticate"] == "Bearer" and set(body) == {"error"}
        assert s.client.is_server_live() and s.client.is_server_ready()
        right = {"Authorization": f"Bearer {TOKEN}"}
        result = s.client.infer(*args, headers=right, parameters={"n": 2, "steps": 2})
        assert result.as_numpy("MASK").shape == SHAPE
        assert s.client.get_model_metadata(MODEL, headers=right)["name"] == MODEL
        assert counted(s, "unauthorized") == 3 and counted(s, "ok") == 1


def test_bodies_over_the_limit_are_413(segmenter):
    with serving(segmenter, max_request_bytes=1000) as s:
        error = refused(lambda: s.client.infer(MODEL, [infer_input(image())]))
        assert error.status() == "413" and "larger than 1000 bytes" in error.message()
        # No Content-Length (chunked): counted while it streams.
        status, _, body = raw(s.port, "POST", f"/v2/models/{MODEL}/infer", iter([b" " * 600] * 3))
        assert status == 413 and "larger than 1000 bytes" in body["error"]
        small = image(np.uint8, (10, 10))
        assert s.client.infer(MODEL, [infer_input(small)], parameters={"n": 2, "steps": 2}).as_numpy("MASK").shape \
            == (10, 10)
        assert counted(s, "too_large") == 2


def test_a_full_queue_answers_503_with_retry_after(segmenter):
    with serving(segmenter, capacity=1, retry_after=7) as s:
        release = threading.Event()
        try:
            running = s.work.submit(release.wait)
            while s.work.depth:  # until the worker has taken the blocking job
                time.sleep(0.01)
            waiting = s.work.submit(lambda: None)  # the one waiting place
            body = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [2, 2],
                                           "data": [0, 1, 2, 3]}]})
            status, headers, response = raw(s.port, "POST", f"/v2/models/{MODEL}/infer", body)
            assert status == 503 and headers["retry-after"] == "7" and "full" in response["error"]
        finally:
            release.set()
        assert running.result(timeout=10) is True and waiting.result(timeout=10) is None
        assert counted(s, "busy") == 1


def test_an_internal_failure_is_500_without_details(served, segmenter, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret /path")

    monkeypatch.setattr(segmenter, "sample", broken)
    body = json.dumps({"id": "fail-1", "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [2, 2],
                                                   "data": [0, 1, 2, 3]}]})
    before = counted(served, "error")
    with caplog.at_level(logging.INFO, logger="ldseg_rt.serve.oip"):
        status, _, response = raw(served.port, "POST", f"/v2/models/{MODEL}/infer", body)
    assert status == 500 and response == {"error": "internal error (request fail-1)"}
    assert "secret /path" in caplog.text and "Traceback" in caplog.text  # the log has it, the client does not
    assert counted(served, "error") == before + 1
