"""What each path of the endpoint answers: health, server and model metadata, readiness,
Prometheus text and infer."""
from __future__ import annotations

import logging
import secrets
import time

from fastapi import Request
from fastapi.responses import Response

from ... import __version__
from .auth import BearerAuth
from .errors import HttpError, error_response, refusal
from .infer_log import InferLog
from .parsing import IMAGE, RequestParser
from .runner import VERSION, ModelRunner

log = logging.getLogger(__name__)


def describe_model(segmenter) -> dict:
    """The model's name, version and tensors, as the protocol describes them."""
    config = segmenter.config
    return {"name": segmenter.model_name, "versions": [VERSION], "platform": f"ldseg_rt_{config.family}",
            "inputs": [{"name": IMAGE, "datatype": "FP32",
                        "shape": [-1, -1] if config.in_channels == 1 else [-1, -1, config.in_channels]}],
            "outputs": [{"name": "MASK", "datatype": "UINT8", "shape": [-1, -1]},
                        {"name": "PROBS", "datatype": "FP32", "shape": [config.num_classes, -1, -1]},
                        {"name": "UNCERTAINTY", "datatype": "FP32", "shape": [-1, -1]},
                        {"name": "SAMPLES", "datatype": "UINT8", "shape": [-1, -1, -1]}]}


class Handlers:
    """The answers of one model's endpoint: infer requests authorised by `authorize`, parsed
    by `parser`, run by `runner` and counted in `metrics`; readiness follows the runner's work
    queue; retry_after: the seconds a busy answer (503) tells the client to wait."""

    def __init__(self, runner: ModelRunner, parser: RequestParser, authorize: BearerAuth, metrics,
                 retry_after: int):
        self.runner, self.parser, self.authorize = runner, parser, authorize
        self.metrics, self.retry_after = metrics, retry_after
        self.metadata = describe_model(runner.segmenter)

    async def live(self) -> Response:
        return Response()

    async def ready(self) -> Response:
        return Response() if self.runner.work.accepting else error_response(503, "the service is shutting down")

    async def server_metadata(self) -> dict:
        return {"name": "ldseg_rt", "version": __version__, "extensions": ["binary_tensor_data"]}

    async def model_metadata(self, request: Request) -> dict:
        self.check_model(request)
        return self.metadata

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        return await self.ready()

    async def prometheus(self) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def infer(self, request: Request) -> Response:
        """Authorises and counts itself, so that every infer request is logged and counted."""
        start = time.perf_counter()
        record = InferLog(id=secrets.token_hex(8))
        try:
            await self.authorize(request)
            self.check_model(request)
            response, outcome = await self.runner.run(await self.parser.read(request, record), record), "ok"
        except Exception as e:
            refused = refusal(e, record.id, self.retry_after)
            response, outcome = refused.response(), refused.outcome
        seconds = time.perf_counter() - start
        record.bytes_out = len(response.body)
        self.metrics.request("http", outcome, seconds)
        log.info("infer model=%r %s total_ms=%.1f status=%d outcome=%s", request.path_params["name"], record,
                 seconds * 1e3, response.status_code, outcome)
        return response

    def check_model(self, request: Request) -> None:
        """404 unless the path names the served model (and its one version, if any)."""
        model = self.runner.model
        name, version = request.path_params["name"], request.path_params.get("version", VERSION)
        if name != model:
            raise HttpError(404, f"unknown model {name!r} (this server serves {model!r})", "not_found")
        if version != VERSION:
            raise HttpError(404, f"model {model!r} has no version {version!r} (only {VERSION!r})", "not_found")
