"""What HTTP model backends share: optional imports and one transient/permanent classifier."""

from __future__ import annotations

import email.utils
import importlib
import re
import ssl
import sys
import time
from types import ModuleType
from typing import Any

from oblix_core.errors import (
    ConfigError,
    ContextWindowExceededError,
    ModelError,
    PermanentModelError,
    TransientModelError,
)

#: HTTP statuses worth a retry or a fallback: timeout, conflict, rate limit, server errors.
#: Every other 4xx is permanent (retrying the same request cannot fix it).
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})

_HINTS = {
    401: " Check the API key.",
    403: " The key lacks access to this model.",
    404: " Check the model name and endpoint.",
    413: " The request is too large for this model.",
}


def seconds_option(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A backend's option in seconds, as a float; a clear ConfigError if it is not one."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or value < 0 or (value == 0 and not allow_zero):
        bound = "a number of seconds >= 0" if allow_zero else "a positive number of seconds"
        raise ConfigError(f"{name} must be {bound}, got {value!r}.")
    return float(value)


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise a ConfigError saying which Oblix extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the {module} package: pip install 'oblix[{extra}]'.") from None


def http_library(client: Any) -> ModuleType:
    """The HTTP library (``httpx``, ``httpx2``...) behind an SDK's HTTP client object.

    SDKs wrap their HTTP client and change libraries between versions (``openai`` 3 uses
    ``httpx2``); errors raised mid-stream come from that library, so catch its
    ``HTTPError``, found from the client's class hierarchy.
    """
    for cls in type(client).__mro__:
        module = sys.modules.get(cls.__module__.split(".")[0])
        if module is not None and isinstance(getattr(module, "HTTPError", None), type):
            return module
    raise TypeError(f"cannot tell the HTTP library of {type(client).__name__}")


#: What servers say when a request is longer than the model's window (OpenAI, vLLM,
#: llama.cpp and llama-cpp-python, Ollama, Anthropic...).
CONTEXT_EXCEEDED = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|prompt is too long|too many tokens|exceed_context",
    re.IGNORECASE,
)
#: Where those messages give the window, in the order tried.
WINDOW_PATTERNS = (
    re.compile(r"maximum context length is (\d+)", re.IGNORECASE),
    re.compile(r"context (?:window|length|size) (?:of|is) (\d+)", re.IGNORECASE),
    re.compile(r"\bn_ctx\W{1,4}(\d+)", re.IGNORECASE),
    re.compile(r"> ?(\d+) (?:tokens )?maximum", re.IGNORECASE),
)


def context_exceeded(
    model_id: str, where: str, status: int, detail: str
) -> ContextWindowExceededError | None:
    """The error for a refusal that says the context was exceeded (and the window, if given)."""
    if status not in (400, 413, 422) or not CONTEXT_EXCEEDED.search(detail):
        return None
    window = next((int(m.group(1)) for p in WINDOW_PATTERNS if (m := p.search(detail))), None)
    size = f"the {window}-token context window" if window else "the context window"
    return ContextWindowExceededError(
        f"{model_id}: the request is longer than {size} of the model at {where} "
        f"({detail.strip().rstrip('.')}). This process now trims the history to fit it; so that "
        f"every run starts there, set context_window{f' = {window}' if window else ''} in its "
        "[[models]] entry (or a smaller max_tokens), or use a model with a larger window.",
        model_id=model_id,
        window=window,
    )


def status_error(model_id: str, where: str, status: int, detail: str) -> ModelError:
    """The Oblix error for an HTTP error status from ``where``."""
    exceeded = context_exceeded(model_id, where, status, detail)
    if exceeded is not None:
        return exceeded
    text = f"{model_id}: HTTP {status} from {where}: {detail.strip().rstrip('.')}."
    if status in TRANSIENT_STATUSES:
        return TransientModelError(text, model_id=model_id)
    return PermanentModelError(text + _HINTS.get(status, ""), model_id=model_id)


def connection_error(model_id: str, where: str, exc: BaseException, *, started: bool) -> TransientModelError:
    """The Oblix error for a transport failure (``started``: after the response began)."""
    if started:
        return TransientModelError(
            f"{model_id}: the connection to {where} broke during the answer ({describe_cause(exc)}).",
            model_id=model_id,
        )
    return TransientModelError(
        f"{model_id}: cannot reach {where} ({describe_cause(exc)}).", model_id=model_id, unreachable=True
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything behind it: causes, contexts and the members of exception groups."""
    found: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        pending.extend(getattr(current, "exceptions", ()))
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return found


def describe_cause(exc: BaseException) -> str:
    """A short, accurate name for a transport failure: refused, DNS, TLS, timeout, reset..."""
    for current in _causes(exc):
        text = str(current)
        if isinstance(current, ssl.SSLError):
            return f"TLS error: {current}"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__:
            return "timed out"
        if "Name or service not known" in text or "getaddrinfo" in text or "nodename nor servname" in text:
            return f"DNS lookup failed: {text}"
        if "incomplete" in text.lower() or "RemoteProtocolError" in type(current).__name__:
            return f"the server closed the connection mid-response: {text}"
    return f"{type(exc).__name__}: {exc}"


def retry_after(headers: Any) -> float | None:
    """Seconds to wait that a 429/503 response asks for: ``retry-after-ms``, else ``retry-after``
    in seconds or as an HTTP date (a date in the past is 0); ``None`` when it asks nothing
    readable. The executor caps the wait (see ``oblix_core.request.execution``)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return max(0.0, float(raw) * scale)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(raw) if scale == 1.0 else None
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - time.time())
    return None
