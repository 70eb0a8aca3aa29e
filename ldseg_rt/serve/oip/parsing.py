"""An infer request, read and parsed into an InferCall: the image, how to sample it and the
outputs to send. The body is refused (413) as soon as it is known to exceed the limit, a
compressed one (415) unread; anything else the model cannot take is a ProtocolError (400)
naming it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fastapi import Request

from ...options import SampleOptions
from .errors import HttpError
from .infer_log import InferLog
from .tensors import HEADER_LENGTH, ProtocolError, Tensor, parse_request

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


@dataclass(frozen=True)
class InferCall:
    """One infer request, parsed: what to run and what to send back."""
    id: str | None  # the request's own id, echoed in the response
    image: np.ndarray
    options: SampleOptions  # steps always set (the model's where unsaid): the response reports them
    outputs: list[tuple[str, bool]]  # (name, binary) of each output to send, in order


@dataclass(frozen=True)
class RequestParser:
    """Reads the infer requests of one model: `defaults` where a request does not say (and
    `model_steps` where neither does), at most `max_n` samples, bodies of at most `max_bytes`."""
    defaults: SampleOptions
    model_steps: int
    max_n: int
    max_bytes: int

    async def read(self, request: Request, record: InferLog) -> InferCall:
        """The request as an InferCall, filling in `record` as each part is read."""
        body = await self.body(request)
        record.bytes_in = len(body)
        parsed = parse_request(body, request.headers.get(HEADER_LENGTH))
        record.id = parsed.id or record.id
        image = image_of(parsed.inputs)
        record.shape, record.dtype = image.shape, str(image.dtype)
        n, steps, seed, binary = self.sample_settings(parsed.parameters)
        record.n, record.steps, record.seed = n, steps, seed
        outputs = requested(parsed.outputs, binary)
        options = SampleOptions.of(self.defaults, n=n, steps=steps, seed=seed,
                                   return_samples=any(name == "SAMPLES" for name, _ in outputs))
        if options.draws > self.max_n:  # n="auto" stops at the server's bound as a number n does
            options = SampleOptions.of(options, max_n=self.max_n)
        return InferCall(parsed.id, image, options, outputs)

    async def body(self, request: Request) -> bytes:
        """The body, refused as soon as it is known to exceed max_bytes: from its declared
        length, and while it streams (a chunked or lying body)."""
        if request.headers.get("content-encoding", "identity") != "identity":
            raise HttpError(415, "compressed request bodies are not accepted", "invalid")
        too_large = HttpError(413, f"the request body is larger than {self.max_bytes} bytes", "too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def sample_settings(self, parameters: dict) -> tuple[object, object, object, bool]:
        """n, steps and seed as sent or by default (SampleOptions checks them), and
        binary_data_output."""
        unknown = [key for key in parameters if key not in SAMPLE_PARAMETERS + RESERVED_PARAMETERS
                   and not key.startswith(RESERVED_PREFIX)]
        if unknown:
            raise ProtocolError(f"unknown request parameters {', '.join(map(repr, unknown))} (this model takes "
                                f"{', '.join(SAMPLE_PARAMETERS)})")
        binary = parameters.get("binary_data_output", False)
        if not isinstance(binary, bool):
            raise ProtocolError(f"binary_data_output must be true or false, got {binary!r}")
        n = parameters.get("n", self.defaults.n)
        if type(n) is int and n > self.max_n:
            raise ProtocolError(f"n={n} is more samples than this server gives one request (at most {self.max_n})")
        steps = parameters.get("steps", self.defaults.steps)
        return n, self.model_steps if steps is None else steps, parameters.get("seed", self.defaults.seed), binary


def image_of(inputs: list[Tensor]) -> np.ndarray:
    """The one input's array, IMAGE of an accepted datatype."""
    names = [t.name for t in inputs]
    if names != [IMAGE]:
        raise ProtocolError(f"the model takes one input, {IMAGE!r}; got {', '.join(map(repr, names))}")
    if inputs[0].datatype not in IMAGE_DATATYPES:
        raise ProtocolError(f"input {IMAGE!r}: datatype {inputs[0].datatype} is not accepted (accepted: "
                            f"{', '.join(IMAGE_DATATYPES)})")
    return inputs[0].data


def requested(outputs: list | None, binary: bool) -> list[tuple[str, bool]]:
    """(name, binary) of each output to send; binary: the default where an output does not say."""
    if not outputs:
        return [(name, binary) for name in DEFAULT_OUTPUTS]
    names = [name for name, _ in outputs]
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown:
        raise ProtocolError(f"unknown outputs {', '.join(map(repr, unknown))} (the model has {', '.join(OUTPUTS)})")
    if len(set(names)) < len(names):
        raise ProtocolError("an output is requested more than once")
    return [(name, binary if said is None else said) for name, said in outputs]
