"""create_app: the FastAPI app of the endpoint, its route table and exception handlers (see
the package's docstring for the paths)."""
from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ... import __version__
from ...options import SampleOptions
from .auth import BearerAuth
from .errors import HttpError, error_response, refusal
from .handlers import Handlers
from .limits import DEFAULT_MAX_N, DEFAULT_MAX_REQUEST_BYTES
from .parsing import RequestParser
from .runner import ModelRunner

MODEL_PATHS = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")


def create_app(segmenter, work, metrics, *, options: SampleOptions | None = None, token: str | None = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_n: int = DEFAULT_MAX_N,
               retry_after: int = 1) -> FastAPI:
    """The endpoint for `segmenter`, running each image through the per-case workflow's array
    part (ldseg_rt.workflow.segment_data) on `work` (a WorkQueue) and counting requests in
    `metrics`. options: how an image is sampled where a request does not say (n, steps, seed);
    token: the bearer token every path but the health probes needs (None: open); max_n: the
    most samples a request may ask for; retry_after: the seconds a busy answer (503) tells
    the client to wait."""
    authorize = BearerAuth(token)
    parser = RequestParser(SampleOptions.of(options), segmenter.config.steps, max_n, max_request_bytes)
    handlers = Handlers(ModelRunner(segmenter, work), parser, authorize, metrics, retry_after)
    app = FastAPI(title="ldseg_rt", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    add_exception_handlers(app, retry_after)
    add_routes(app, handlers, authorize)
    return app


def add_routes(app: FastAPI, handlers: Handlers, authorize: BearerAuth) -> None:
    """The health probes open to all; infer authorising itself (so that a refused request is
    logged and counted too); every other path behind `authorize`."""
    app.add_api_route("/v2/health/live", handlers.live, methods=["GET"])
    app.add_api_route("/v2/health/ready", handlers.ready, methods=["GET"])
    for path in MODEL_PATHS:
        app.add_api_route(f"{path}/infer", handlers.infer, methods=["POST"])
    closed = APIRouter(dependencies=[Depends(authorize)])
    closed.add_api_route("/v2", handlers.server_metadata, methods=["GET"])
    for path in MODEL_PATHS:
        closed.add_api_route(path, handlers.model_metadata, methods=["GET"])
        closed.add_api_route(f"{path}/ready", handlers.model_ready, methods=["GET"])
    closed.add_api_route("/metrics", handlers.prometheus, methods=["GET"])
    app.include_router(closed)


def add_exception_handlers(app: FastAPI, retry_after: int) -> None:
    """Every error as the protocol's JSON body, whether the endpoint, FastAPI or a bug raised it."""

    async def on_refusal(request: Request, e: HttpError) -> JSONResponse:
        return e.response()

    async def on_http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), e.headers)

    async def on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(400, "; ".join(str(error.get("msg")) for error in e.errors()))

    async def on_failure(request: Request, e: Exception) -> JSONResponse:
        return refusal(e, secrets.token_hex(8), retry_after).response()

    for kind, handler in ((HttpError, on_refusal), (HTTPException, on_http_error),
                          (RequestValidationError, on_invalid), (Exception, on_failure)):
        app.add_exception_handler(kind, handler)
