"""OpenAI-style errors: one exception type carrying the HTTP status, and the JSON it becomes.

Every error response of the server has OpenAI's shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}

and never a stack trace or an HTML page. :func:`from_oblix` maps the core's errors to
statuses (404 unknown session, 503 no model could answer...).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from oblix.plugin import (
    ExchangeNotStoredError,
    IdempotencyInFlightError,
    IdempotencyKeyMismatchError,
    InvalidSessionIdError,
    NoModelAvailableError,
    OblixError,
    SessionNotFoundError,
    StreamInterruptedError,
    scrub_secrets,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
#: OpenAI's error ``type`` for each status the server uses.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error the client gets as OpenAI-style JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = scrub_secrets(message)
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers | (headers or {}))


def from_oblix(exc: OblixError) -> APIError:
    """The HTTP error for a core error raised while serving a request."""
    text = str(exc)
    if isinstance(exc, SessionNotFoundError):
        return APIError(404, text, code="session_not_found")
    if isinstance(exc, InvalidSessionIdError):
        return APIError(400, text, code="invalid_session_id", param="X-Oblix-Session-Id")
    if isinstance(exc, NoModelAvailableError):
        return APIError(503, text, code="no_model_available")
    if isinstance(exc, StreamInterruptedError):
        return APIError(502, text, code="stream_interrupted")
    if isinstance(exc, ExchangeNotStoredError):
        return APIError(500, text, code="exchange_not_stored")
    if isinstance(exc, IdempotencyKeyMismatchError):
        return APIError(422, text, code="idempotency_key_mismatch", param=IDEMPOTENCY_HEADER)
    if isinstance(exc, IdempotencyInFlightError):
        retry = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return APIError(409, text, code="idempotency_key_in_use", param=IDEMPOTENCY_HEADER, headers=retry)
    return APIError(422, text, code="invalid_request")


def internal(request_id: str) -> APIError:
    """What the client sees for an unexpected server fault (details go to the server log)."""
    return APIError(
        500,
        f"The Oblix server failed unexpectedly while serving request {request_id}; see the server log.",
        code="internal_error",
    )
