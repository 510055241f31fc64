"""The rules of ``oblix_server.edges`` and the server settings' checks, as plain functions.

The same rules are tested end to end on real server processes in ``tests/test_server_edges.py``;
here each case of the parsing is checked on its own (no process, no socket).
"""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from oblix.plugin import ConfigError
from oblix_server.edges import body_refusal, edge_refusal, framing_refusal, host_name, is_loopback_name
from oblix_server.settings import ServerSettings


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8000", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("evil.example", "evil.example"),
        ("", None),
        (":80", None),
        ("a:b", None),
        ("[::1", None),
        ("[::1]x", None),
        ("user@evil.example", None),
        ("evil.example/x", None),
    ],
)
def test_host_name(value: str, host: str | None) -> None:
    assert host_name(value) == host


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("app.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("::", False),
    ],
)
def test_loopback_names_are_read_never_resolved(host: str, loopback: bool) -> None:
    assert is_loopback_name(host) is loopback


def headers(**values: str) -> Headers:
    return Headers({name.replace("_", "-"): value for name, value in values.items()})


def test_the_host_rule_applies_without_a_key_or_with_an_allow_list() -> None:
    keyless, keyed = ServerSettings(), ServerSettings(api_key="sk-12345678")
    proxied = ServerSettings(api_key="sk-12345678", allowed_hosts=("oblix.internal",))
    foreign = headers(host="evil.example")
    refused = edge_refusal(keyless, "/v1/models", foreign)
    assert refused is not None and refused.status == 403 and refused.code == "host_not_allowed"
    assert edge_refusal(keyed, "/v1/models", foreign) is None  # the key protects
    assert edge_refusal(proxied, "/v1/models", foreign) is not None  # the allow-list still applies
    assert edge_refusal(proxied, "/v1/models", headers(host="OBLIX.internal:443")) is None
    assert edge_refusal(keyless, "/v1/models", Headers({})) is not None  # no Host at all


def test_the_origin_rule() -> None:
    settings = ServerSettings()
    own = headers(host="127.0.0.1:8000", origin="http://127.0.0.1:8000")
    assert edge_refusal(settings, "/v1/chat/completions", own) is None
    for origin in ("http://127.0.0.1:8001", "https://evil.example", "null", "file://"):
        refused = edge_refusal(
            settings, "/v1/chat/completions", headers(host="127.0.0.1:8000", origin=origin)
        )
        assert refused is not None and refused.code == "origin_not_allowed", origin
    assert edge_refusal(settings, "/ui", headers(host="localhost", origin="https://evil.example")) is None


@pytest.mark.parametrize(
    ("content_type", "refused"),
    [
        ("application/json", False),
        ("application/json; charset=utf-8", False),
        ("Application/JSON", False),
        ("application/merge-patch+json", False),
        ("text/plain;charset=UTF-8", True),
        ("application/x-www-form-urlencoded", True),
        ("multipart/form-data; boundary=x", True),
        ("application/jsonx", True),
        (None, True),
    ],
)
def test_post_bodies_must_be_json(content_type: str | None, refused: bool) -> None:
    given = headers(content_type=content_type) if content_type else Headers({})
    answer = body_refusal("POST", given)
    assert (answer is not None) is refused
    if answer is not None:
        assert answer.status == 415 and answer.code == "unsupported_media_type"
    assert body_refusal("GET", given) is None


def test_content_length_with_transfer_encoding_is_ambiguous() -> None:
    both = framing_refusal(headers(content_length="5", transfer_encoding="chunked"))
    assert both is not None and both.status == 400 and both.headers["Connection"] == "close"
    assert framing_refusal(headers(content_length="5")) is None
    assert framing_refusal(headers(transfer_encoding="chunked")) is None


@pytest.mark.parametrize("name", ["", "http://proxy", "proxy:8080", "proxy/x", "user@proxy", "[::1]"])
def test_allowed_hosts_are_bare_names(name: str) -> None:
    with pytest.raises(ConfigError, match="--allowed-host takes a host name"):
        ServerSettings(allowed_hosts=(name,)).check()


@pytest.mark.parametrize("name", ["send_timeout", "max_header_bytes", "max_messages"])
def test_new_bounds_must_be_positive(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        ServerSettings(**{name: 0}).check()
