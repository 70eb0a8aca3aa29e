"""The bearer token that every path but the health probes needs, when the server has one."""
from __future__ import annotations

import secrets

from fastapi import Request

from .errors import HttpError


class BearerAuth:
    """A FastAPI dependency: refuses (401) a request without `Authorization: Bearer <token>`;
    token None: every request passes."""

    def __init__(self, token: str | None):
        self.token = token

    async def __call__(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Header values arrive decoded as latin-1: compared as bytes, any value compares in constant time.
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode("latin-1"), self.token.encode()):
            raise HttpError(401, "a valid bearer token is required (Authorization: Bearer <token>)", "unauthorized",
                            {"WWW-Authenticate": "Bearer"})
