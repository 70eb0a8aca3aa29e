"""The model runner: each InferCall through the per-case workflow's array part
(ldseg_rt.workflow.segment_data) on the work queue, so that an image gives the bytes that
`segment` gives the same image, and its result as the response's tensors."""
from __future__ import annotations

import asyncio
import time

from fastapi.responses import Response

from ...workflow import segment_data
from .infer_log import InferLog
from .parsing import InferCall
from .tensors import HEADER_LENGTH, encode_response

VERSION = "1"  # the one version of the one model served


class ModelRunner:
    """Runs one segmenter's InferCalls, one at a time on `work` (a WorkQueue)."""

    def __init__(self, segmenter, work):
        self.segmenter, self.work = segmenter, work
        self.model = segmenter.model_name

    async def run(self, call: InferCall, record: InferLog) -> Response:
        """The call's response; ServiceBusyError when the queue is full. `record` gets the
        seed used and the time spent waiting in the queue."""
        submitted = time.perf_counter()
        future = self.work.submit(segment_data, self.segmenter, call.image, call.options)
        result = await asyncio.wrap_future(future)  # awaits without holding a thread
        record.seed = result.seed
        record.queue_ms = round((time.perf_counter() - submitted) * 1e3 - result.timings.get("total", 0.0), 1)
        return self.response(call, result)

    def response(self, call: InferCall, result) -> Response:
        """The requested outputs of `result`, and in the parameters the seed, n and steps
        that reproduce it (and any warnings)."""
        header = {"model_name": self.model, "model_version": VERSION}
        if call.id is not None:
            header["id"] = call.id
        header["parameters"] = {"seed": result.seed, "n": result.n, "steps": call.options.steps}
        if result.warnings:
            header["parameters"]["warnings"] = [str(w) for w in result.warnings]
        body, header_length = encode_response(header, [(name, getattr(result, name.lower()), binary)
                                                       for name, binary in call.outputs])
        if header_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})
