"""The Open Inference Protocol's (KServe v2 REST) tensors, to and from numpy.

An infer request is a JSON object:

    {"id": "...", "parameters": {...},
     "inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [H, W], "data": [...]}],
     "outputs": [{"name": "MASK", "parameters": {"binary_data": true}}]}

where `data` lists the tensor's elements in row-major order (flat or nested). With the
binary tensor data extension the body is that JSON header, `Inference-Header-Content-Length`
bytes long, followed by the raw little-endian bytes of the inputs that say
`"parameters": {"binary_data_size": N}` instead of carrying `data`, in the order they are
listed. A response is built the same way: outputs in JSON `data`, or in raw bytes after the
JSON header (each output's `binary_data_size` saying how many), the header's length then
sent in the `Inference-Header-Content-Length` response header.

Anything malformed raises ProtocolError (HTTP 400) naming what is wrong.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ...errors import LdsegError

HEADER_LENGTH = "Inference-Header-Content-Length"
# The protocol's numeric datatypes this codec carries, as little-endian numpy dtypes (BYTES,
# BOOL and the rest are refused by name).
DATATYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "UINT8": np.dtype("u1"), "INT16": np.dtype("<i2"),
             "UINT16": np.dtype("<u2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8")}
_DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}


class ProtocolError(LdsegError, ValueError):
    """The request does not follow the Open Inference Protocol (or asks for what this
    server does not offer)."""


class Tensor(NamedTuple):
    name: str
    datatype: str
    data: np.ndarray  # shaped; from binary data, a read-only little-endian view of the body


@dataclass
class InferRequest:
    id: str | None
    parameters: dict  # request-level parameters, as sent
    inputs: list[Tensor]
    outputs: list[tuple[str, bool | None]] | None  # (name, binary_data or None where unsaid); None: none listed


def datatype_of(array: np.ndarray) -> str:
    """The protocol's name of an array's dtype (a ValueError, not a refusal of the request, for
    one it lacks: outputs are the server's own)."""
    try:
        return _DATATYPE_OF[array.dtype.newbyteorder("<")]
    except KeyError:
        raise ValueError(f"arrays of dtype {array.dtype} have no supported datatype") from None


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request body; header_length: the Inference-Header-Content-Length header, None
    when the whole body is JSON."""
    split = len(body) if header_length is None else _header_length(header_length, len(body))
    try:
        request = json.loads(body[:split])
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"the request header is not valid JSON: {e}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request header must be a JSON object")
    request_id = _field(request, "id", str, "a string", None)
    parameters = _field(request, "parameters", dict, "an object", {})
    inputs = _field(request, "inputs", list, "a list", None)
    if not inputs:
        raise ProtocolError("the request has no inputs")
    binary = memoryview(body)[split:]
    tensors, offset = [], 0
    for spec in inputs:
        tensor, size = _input(spec, binary[offset:])
        tensors.append(tensor)
        offset += size
    if offset != len(binary):
        raise ProtocolError(f"{len(binary)} bytes follow the JSON header but the inputs' binary_data_size add up "
                            f"to {offset}")
    outputs = _field(request, "outputs", list, "a list", None)
    return InferRequest(request_id, parameters, tensors, None if outputs is None else [_output(o) for o in outputs])


def encode_response(header: dict, outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """The response body for `header` (every field but "outputs") and the outputs, each a
    (name, array, binary) triple; and the JSON header's length, None when nothing is binary."""
    described, raw = [], []
    for name, array, binary in outputs:
        tensor = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            raw.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
            tensor["parameters"] = {"binary_data_size": len(raw[-1])}
        else:
            tensor["data"] = array.ravel().tolist()
        described.append(tensor)
    text = json.dumps({**header, "outputs": described}, allow_nan=False, separators=(",", ":")).encode()
    return b"".join([text, *raw]), len(text) if raw else None


def _header_length(value: str, body_size: int) -> int:
    if not value.isdigit() or int(value) > body_size:
        raise ProtocolError(f"{HEADER_LENGTH} must be a number of bytes within the body's {body_size}, got {value!r}")
    return int(value)


def _field(obj: dict, key: str, kind: type, what: str, default, where: str = "the request"):
    value = obj.get(key, default)
    if value is not default and not isinstance(value, kind):
        raise ProtocolError(f"{key!r} of {where} must be {what}, got {type(value).__name__}")
    return value


def _named(spec, kind: str, known: str) -> tuple[str, str, dict]:
    """An input's or a requested output's name, how messages refer to it, and its parameters
    (`known` the only one allowed: shared memory and classification are not offered)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError(f"each {kind} must be an object with a string 'name'")
    where = f"{kind} {spec['name']!r}"
    parameters = _field(spec, "parameters", dict, "an object", {}, where)
    unknown = sorted(set(parameters) - {known})
    if unknown:
        raise ProtocolError(f"{where}: unsupported parameters {', '.join(unknown)} (only {known} is)")
    return spec["name"], where, parameters


def _output(spec) -> tuple[str, bool | None]:
    name, where, parameters = _named(spec, "output", "binary_data")
    binary = parameters.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise ProtocolError(f"{where}: binary_data must be true or false, got {json.dumps(binary)}")
    return name, binary


def _input(spec, binary: memoryview) -> tuple[Tensor, int]:
    """One input and how many bytes of the binary section it took."""
    name, where, parameters = _named(spec, "input", "binary_data_size")
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(f"{where}: datatype {json.dumps(datatype)} is not supported (supported: "
                            f"{', '.join(DATATYPES)})")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"{where}: shape must be a list of non-negative integers, got {json.dumps(shape)}")
    dtype, count = DATATYPES[datatype], math.prod(shape)
    if "binary_data_size" not in parameters:
        return Tensor(name, datatype, _from_json(where, spec.get("data"), dtype, count).reshape(shape)), 0
    size = parameters["binary_data_size"]
    if type(size) is not int or size != count * dtype.itemsize:
        raise ProtocolError(f"{where}: a {datatype} tensor of shape {shape} takes {count * dtype.itemsize} bytes, "
                            f"binary_data_size says {json.dumps(size)}")
    if size > len(binary):
        raise ProtocolError(f"{where}: binary_data_size {size} runs past the end of the body")
    return Tensor(name, datatype, np.frombuffer(binary[:size], dtype).reshape(shape)), size


def _from_json(where: str, data, dtype: np.dtype, count: int) -> np.ndarray:
    """JSON `data` as a flat array of `count` values of dtype, refusing what would not survive
    the conversion (fractions or out-of-range values for integers, strings, booleans)."""
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: needs 'data' (a list) or parameters.binary_data_size")
    try:
        values = np.asarray(data).ravel()
    except ValueError:
        raise ProtocolError(f"{where}: data is not a regular (flat or nested) list") from None
    if values.size != count:
        raise ProtocolError(f"{where}: its shape needs {count} values, data has {values.size}")
    if values.size and values.dtype.kind not in ("iuf" if dtype.kind == "f" else "iu"):
        raise ProtocolError(f"{where}: data must be {'numbers' if dtype.kind == 'f' else 'integers'}")
    if values.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise ProtocolError(f"{where}: data outside [{info.min}, {info.max}]")
    return values.astype(dtype)
