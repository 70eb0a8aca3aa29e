"""The endpoint's refusals: every error is a JSON body {"error": message}, which Triton's
clients read, with the HTTP status and metrics outcome that its cause gets."""
from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from ...errors import LdsegError, ServiceBusyError

log = logging.getLogger(__name__)


class HttpError(Exception):
    """A refusal with its HTTP status, its metrics outcome and any headers it needs."""

    def __init__(self, status: int, message: str, outcome: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.outcome, self.headers = status, outcome, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, str(self), self.headers)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


def refusal(e: Exception, request_id: str, retry_after: int) -> HttpError:
    """The refusal an exception gets: a full queue is 503 with Retry-After (seconds), a
    library error 400 with its message; anything else is a bug, logged with its traceback
    and answered 500 naming only the request (the log says the rest)."""
    if isinstance(e, HttpError):
        return e
    if isinstance(e, ServiceBusyError):
        return HttpError(503, str(e), "busy", {"Retry-After": str(retry_after)})
    if isinstance(e, LdsegError):
        return HttpError(400, str(e), "invalid")
    log.error("request %s failed", request_id, exc_info=e)
    return HttpError(500, f"internal error (request {request_id})", "error")
