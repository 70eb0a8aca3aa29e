"""The Open Inference Protocol (KServe v2 REST) endpoint, as Triton's clients speak it.

    GET  /v2/health/live, /v2/health/ready          open to all (probes)
    GET  /v2                                         server metadata
    GET  /v2/models/{name}[/versions/1]              model metadata
    GET  /v2/models/{name}[/versions/1]/ready
    POST /v2/models/{name}[/versions/1]/infer        one image in, its segmentation out
    GET  /metrics                                    Prometheus text

An infer request carries one input, IMAGE ((H, W) or (H, W, C); FP32, UINT8, INT16 or
UINT16), and may set the request parameters n, seed and steps (sample()'s, which checks
them). The response holds the outputs asked for (MASK, PROBS, UNCERTAINTY by default; SAMPLES
only when asked for) and, in its parameters, the seed, n and steps used: the seed reproduces
the result. Tensors travel in JSON or binary (see tensors.py). Every error is a JSON body
{"error": message}, which Triton's clients read; with a token, every path but the health
probes needs `Authorization: Bearer <token>`.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import LdsegError, ServiceBusyError
from .tensors import HEADER_LENGTH, ProtocolError, Tensor, encode_response, parse_request

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 64 * 2 ** 20  # a 2048 x 2048 x 4 FP32 image in binary, with room to spare
DEFAULT_MAX_N = 128  # samples one request may ask for: compute grows with n, and one request must not hold the model
VERSION = "1"  # the one version of the one model served
IMAGE = "IMAGE"
IMAGE_DATATYPES = ("FP32", "UINT8", "INT16", "UINT16")
OUTPUTS = ("MASK", "PROBS", "UNCERTAINTY", "SAMPLES")
DEFAULT_OUTPUTS = ("MASK", "PROBS", "UNCERTAINTY")  # SAMPLES grows with n: only on request
SAMPLE_PARAMETERS = ("n", "seed", "steps")
# Request parameters Triton's clients may set on their own (tritonclient.utils'
# TRITON_RESERVED_REQUEST_PARAMS and prefix): accepted, and all but binary_data_output ignored.
RESERVED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers",
                       "binary_data_output")
RESERVED_PREFIX = "triton_"


class HttpError(Exception):
    """A refusal with its HTTP status, its metrics outcome and any headers it needs."""

    def __init__(self, status: int, message: str, outcome: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.outcome, self.headers = status, outcome, headers

    def response(self) -> JSONResponse:
        return _error(self.status, str(self), self.headers)


@dataclass
class _InferLog:
    """What an infer request's log line says: never pixel values or patient data."""
    id: str
    shape: tuple | None = None
    dtype: str | None = None
    n: object = None
    steps: object = None
    seed: object = None
    bytes_in: int = 0
    bytes_out: int = 0
    queue_ms: float | None = None

    def __str__(self) -> str:
        return " ".join(f"{key}={value!r}" for key, value in vars(self).items())


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


def create_app(segmenter, work, metrics, *, n: int = 16, token: str | None = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_n: int = DEFAULT_MAX_N,
               retry_after: int = 1) -> FastAPI:
    """The endpoint for `segmenter`, running its sample() calls on `work` (a WorkQueue) and
    counting requests in `metrics`. n: the number of samples when a request does not say;
    token: the bearer token every path but the health probes needs (None: open); max_n: the
    most samples a request may ask for;
    retry_after: the seconds a busy answer (503) tells the client to wait."""
    model = segmenter.model_name
    config = segmenter.config
    model_metadata = {
        "name": model, "versions": [VERSION], "platform": f"ldseg_rt_{config.family}",
        "inputs": [{"name": IMAGE, "datatype": "FP32",
                    "shape": [-1, -1] if config.in_channels == 1 else [-1, -1, config.in_channels]}],
        "outputs": [{"name": "MASK", "datatype": "UINT8", "shape": [-1, -1]},
                    {"name": "PROBS", "datatype": "FP32", "shape": [config.num_classes, -1, -1]},
                    {"name": "UNCERTAINTY", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "SAMPLES", "datatype": "UINT8", "shape": [-1, -1, -1]}]}

    async def authorize(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Header values arrive decoded as latin-1: compared as bytes, any value compares in constant time.
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode("latin-1"), token.encode()):
            raise HttpError(401, "a valid bearer token is required (Authorization: Bearer <token>)", "unauthorized",
                            {"WWW-Authenticate": "Bearer"})

    def check_model(request: Request) -> None:
        name, version = request.path_params["name"], request.path_params.get("version", VERSION)
        if name != model:
            raise HttpError(404, f"unknown model {name!r} (this server serves {model!r})", "not_found")
        if version != VERSION:
            raise HttpError(404, f"model {model!r} has no version {version!r} (only {VERSION!r})", "not_found")

    def refusal(e: Exception, request_id: str) -> tuple[JSONResponse, str]:
        """The error response for an exception, and its metrics outcome."""
        if isinstance(e, HttpError):
            return e.response(), e.outcome
        if isinstance(e, ServiceBusyError):
            return _error(503, str(e), {"Retry-After": str(retry_after)}), "busy"
        if isinstance(e, LdsegError):
            return _error(400, str(e)), "invalid"
        log.exception("request %s failed", request_id)
        return _error(500, f"internal error (request {request_id})"), "error"

    async def read_body(request: Request) -> bytes:
        """The body, refused as soon as it is known to exceed max_request_bytes: from its
        declared length, and while it streams (a chunked or lying body)."""
        if request.headers.get("content-encoding", "identity") != "identity":
            raise HttpError(415, "compressed request bodies are not accepted", "invalid")
        too_large = HttpError(413, f"the request body is larger than {max_request_bytes} bytes", "too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_request_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def image_of(inputs: list[Tensor]):
        """The one input's array, IMAGE of an accepted datatype."""
        names = [t.name for t in inputs]
        if names != [IMAGE]:
            raise ProtocolError(f"the model takes one input, {IMAGE!r}; got {', '.join(map(repr, names))}")
        if inputs[0].datatype not in IMAGE_DATATYPES:
            raise ProtocolError(f"input {IMAGE!r}: datatype {inputs[0].datatype} is not accepted (accepted: "
                                f"{', '.join(IMAGE_DATATYPES)})")
        return inputs[0].data

    def sample_arguments(parameters: dict) -> tuple[object, object, object, bool]:
        """n, steps and seed as sent (sample() checks them), and binary_data_output."""
        unknown = [key for key in parameters if key not in SAMPLE_PARAMETERS + RESERVED_PARAMETERS
                   and not key.startswith(RESERVED_PREFIX)]
        if unknown:
            raise ProtocolError(f"unknown request parameters {', '.join(map(repr, unknown))} (this model takes "
                                f"{', '.join(SAMPLE_PARAMETERS)})")
        binary = parameters.get("binary_data_output", False)
        if not isinstance(binary, bool):
            raise ProtocolError(f"binary_data_output must be true or false, got {binary!r}")
        count = parameters.get("n", n)
        if type(count) is int and count > max_n:
            raise ProtocolError(f"n={count} is more samples than this server gives one request (at most {max_n})")
        return count, parameters.get("steps"), parameters.get("seed"), binary

    def requested(outputs: list | None, binary: bool) -> list[tuple[str, bool]]:
        """(name, binary) of each output to send; binary: the default where an output does not say."""
        if not outputs:
            return [(name, binary) for name in DEFAULT_OUTPUTS]
        names = [name for name, _ in outputs]
        unknown = [name for name in names if name not in OUTPUTS]
        if unknown:
            raise ProtocolError(f"unknown outputs {', '.join(map(repr, unknown))} (the model has "
                                f"{', '.join(OUTPUTS)})")
        if len(set(names)) < len(names):
            raise ProtocolError("an output is requested more than once")
        return [(name, binary if said is None else said) for name, said in outputs]

    async def run(request: Request, record: _InferLog) -> Response:
        body = await read_body(request)
        record.bytes_in = len(body)
        infer_request = parse_request(body, request.headers.get(HEADER_LENGTH))
        record.id = infer_request.id or record.id
        image = image_of(infer_request.inputs)
        record.shape, record.dtype = image.shape, str(image.dtype)
        count, steps, seed, binary = sample_arguments(infer_request.parameters)
        steps = config.steps if steps is None else steps
        record.n, record.steps, record.seed = count, steps, seed
        outputs = requested(infer_request.outputs, binary)

        submitted = time.perf_counter()
        future = work.submit(segmenter.sample, image, count, steps, seed, None, any(o == "SAMPLES" for o, _ in outputs))
        result = await asyncio.wrap_future(future)  # awaits without holding a thread
        record.seed = result.seed
        record.queue_ms = round((time.perf_counter() - submitted) * 1e3 - result.timings.get("total", 0.0), 1)

        header = {"model_name": model, "model_version": VERSION}
        if infer_request.id is not None:
            header["id"] = infer_request.id
        header["parameters"] = {"seed": result.seed, "n": count, "steps": steps}
        if result.warnings:
            header["parameters"]["warnings"] = [str(w) for w in result.warnings]
        body, header_length = encode_response(header, [(name, getattr(result, name.lower()), binary)
                                                       for name, binary in outputs])
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})

    app = FastAPI(title="ldseg_rt", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    closed = APIRouter(dependencies=[Depends(authorize)])

    @app.exception_handler(HttpError)
    async def on_refusal(request: Request, e: HttpError) -> JSONResponse:
        return e.response()

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), e.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return _error(400, "; ".join(str(error.get("msg")) for error in e.errors()))

    @app.exception_handler(Exception)
    async def on_failure(request: Request, e: Exception) -> JSONResponse:
        return refusal(e, secrets.token_hex(8))[0]

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response()

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response() if work.accepting else _error(503, "the service is shutting down")

    @closed.get("/v2")
    async def server_metadata() -> dict:
        return {"name": "ldseg_rt", "version": __version__, "extensions": ["binary_tensor_data"]}

    @closed.get("/v2/models/{name}")
    @closed.get("/v2/models/{name}/versions/{version}")
    async def get_model_metadata(request: Request) -> dict:
        check_model(request)
        return model_metadata

    @closed.get("/v2/models/{name}/ready")
    @closed.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request) -> Response:
        check_model(request)
        return await ready()

    @closed.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request) -> Response:
        """Authorises and counts itself, so that every infer request is logged and counted."""
        start = time.perf_counter()
        record = _InferLog(id=secrets.token_hex(8))
        try:
            await authorize(request)
            check_model(request)
            response, outcome = await run(request, record), "ok"
        except Exception as e:
            response, outcome = refusal(e, record.id)
        seconds = time.perf_counter() - start
        record.bytes_out = len(response.body)
        metrics.request("http", outcome, seconds)
        log.info("infer model=%r %s total_ms=%.1f status=%d outcome=%s", request.path_params["name"], record,
                 seconds * 1e3, response.status_code, outcome)
        return response

    app.include_router(closed)
    return app
