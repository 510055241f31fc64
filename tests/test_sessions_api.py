"""The sessions API of the reference document, through OblixClient on the file store."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from oblix import OblixClient
from oblix_core.errors import (
    InvalidSessionDocumentError,
    InvalidSessionIdError,
    OblixError,
    SessionExistsError,
    SessionNotFoundError,
)
from oblix_core.sessions.transfer import FORMAT_VERSION

DATA = Path(__file__).parent / "data"

# name -> (is async, parameters with defaults) exactly as in the API reference
REFERENCE = {
    "create_session": (True, "(title: str = None, initial_context: dict = None, metadata: dict = None)"),
    "create_and_use_session": (
        True,
        "(title: str = None, initial_context: dict = None, metadata: dict = None)",
    ),
    "use_session": (False, "(session_id: str)"),
    "load_session": (False, "(session_id: str)"),
    "list_sessions": (False, "(limit: int = 50, filter_metadata: dict = None)"),
    "delete_session": (False, "(session_id: str)"),
    "update_session_metadata": (False, "(session_id: str, metadata: dict)"),
    "get_session_metadata": (False, "(session_id: str)"),
    "export_session": (True, "(session_id: str, file_path: str)"),
    "import_session": (True, "(file_path: str, new_id: bool = False, use_immediately: bool = False)"),
    "copy_session": (True, "(session_id: str, new_title: str = None, use_immediately: bool = False)"),
    "merge_sessions": (True, "(session_ids: List[str], title: str = None, use_immediately: bool = False)"),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_signatures_match_the_reference(name: str) -> None:
    is_async, signature = REFERENCE[name]
    method = getattr(OblixClient, name)
    assert inspect.iscoroutinefunction(method) is is_async
    params = list(inspect.signature(method).parameters.values())[1:]
    expected = [p.strip() for p in signature.strip("()").split(",")]
    assert [p.name for p in params] == [e.split(":")[0] for e in expected]
    for param, text in zip(params, expected, strict=True):
        default = text.split("=")[1].strip() if "=" in text else None
        if default is None:
            assert param.default is inspect.Parameter.empty
        else:
            assert param.default == eval(default)


@pytest.mark.anyio
async def test_create_load_list_update_delete(client: OblixClient) -> None:
    plain = await client.create_session()
    sid = await client.create_session(
        title="Customer Support Chat",
        initial_context={"customer_id": "cust_123"},
        metadata={"category": "support", "priority": "high"},
    )
    data = client.load_session(sid)
    assert set(data) == {"id", "title", "created_at", "updated_at", "messages", "context", "metadata"}
    assert data["title"] == "Customer Support Chat" and data["messages"] == []
    assert data["context"] == {"customer_id": "cust_123"}
    assert client.load_session(plain)["title"] is None
    assert [
        s["id"] for s in client.list_sessions(filter_metadata={"category": "support", "priority": "high"})
    ] == [sid]
    assert len(client.list_sessions(limit=1)) == 1
    assert client.update_session_metadata(
        sid, {"status": "resolved", "resolution_time": "2023-07-15T15:30:00Z"}
    )
    assert client.get_session_metadata(sid) == {
        "category": "support",
        "priority": "high",
        "status": "resolved",
        "resolution_time": "2023-07-15T15:30:00Z",
    }
    assert client.list_sessions()[0]["id"] == sid  # updated most recently
    assert client.delete_session(sid) is True
    assert client.delete_session(sid) is False
    with pytest.raises(SessionNotFoundError):
        client.load_session(sid)


@pytest.mark.anyio
async def test_current_session(client: OblixClient) -> None:
    sid = await client.create_and_use_session(title="t", metadata={"category": "support"})
    assert client.current_session_id == sid
    other = await client.create_session()
    assert client.use_session(other) is True and client.current_session_id == other
    assert client.use_session("00000000-0000-0000-0000-000000000000") is False
    assert client.current_session_id == other
    with pytest.raises(InvalidSessionIdError):
        client.use_session("../etc")


@pytest.mark.anyio
async def test_bad_input_gets_clear_errors(client: OblixClient) -> None:
    with pytest.raises(OblixError, match="JSON"):
        await client.create_session(metadata={"when": object()})
    with pytest.raises(OblixError, match="dict"):
        await client.create_session(initial_context=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(OblixError, match="limit"):
        client.list_sessions(limit=-1)
    sid = await client.create_session(metadata={"a": 1})
    with pytest.raises(OblixError):
        client.update_session_metadata(sid, {"x": float("nan")})
    assert client.get_session_metadata(sid) == {"a": 1}
    assert client.update_session_metadata("00000000-0000-0000-0000-000000000000", {"a": 2}) is False
    assert client.list_sessions() and len(client.list_sessions()) == 1


@pytest.mark.anyio
async def test_import_reference_document_verbatim(client: OblixClient) -> None:
    sid = await client.import_session(str(DATA / "reference_session.json"))
    assert sid == "5f3e9a7b-6c1d-4d8e-9e7a-9b8c7d6e5f4a"
    data = client.load_session(sid)
    reference = json.loads((DATA / "reference_session.json").read_text())
    assert data == reference
    with pytest.raises(SessionExistsError, match="new_id=True"):
        await client.import_session(str(DATA / "reference_session.json"))
    copy_id = await client.import_session(
        str(DATA / "reference_session.json"), new_id=True, use_immediately=True
    )
    assert copy_id != sid and client.current_session_id == copy_id
    assert [m["content"] for m in client.load_session(copy_id)["messages"]] == [
        m["content"] for m in reference["messages"]
    ]


@pytest.mark.anyio
async def test_export_import_round_trip(client: OblixClient, tmp_path: Path) -> None:
    sid = await client.create_session("Export me", {"k": "v"}, {"category": "demo"})
    await client.hook_model("scripted", "m")
    await client.execute("hello there", session_id=sid, stream=False)
    target = tmp_path / "out" / "session.json"
    assert await client.export_session(sid, str(target)) is True
    document = json.loads(target.read_text())
    assert document["format_version"] == FORMAT_VERSION
    assert {k: v for k, v in document.items() if k != "format_version"} == client.load_session(sid)
    client.delete_session(sid)
    assert await client.import_session(str(target)) == sid
    assert client.load_session(sid)["metadata"] == {"category": "demo"}


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"id": "../../evil", "messages": []}', "'id'"),
        ('{"id": "ok", "messages": {}}', "'messages'"),
        ('{"id": "ok", "messages": [{"role": "robot", "content": "x"}]}', "role"),
        ('{"id": "ok", "messages": [{"role": "user", "content": 5}]}', "content"),
        (
            '{"id": "ok", "messages": [{"role": "user", "content": "x", "timestamp": "yesterday"}]}',
            "timestamp",
        ),
        ('{"id": "ok", "metadata": [1]}', "'metadata'"),
        ('{"id": "ok", "format_version": 99}', "format_version"),
    ],
)
@pytest.mark.anyio
async def test_invalid_documents_create_nothing(
    client: OblixClient, tmp_path: Path, document: str, problem: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(document)
    with pytest.raises(InvalidSessionDocumentError, match=problem):
        await client.import_session(str(path))
    assert client.list_sessions() == []
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.anyio
async def test_import_missing_file(client: OblixClient, tmp_path: Path) -> None:
    with pytest.raises(OblixError, match="Cannot read"):
        await client.import_session(str(tmp_path / "nope.json"))


@pytest.mark.anyio
async def test_copy_session(client: OblixClient) -> None:
    sid = await client.import_session(str(DATA / "reference_session.json"))
    copy_id = await client.copy_session(
        sid, new_title="Copy - Customer Onboarding Template", use_immediately=True
    )
    original, copy = client.load_session(sid), client.load_session(copy_id)
    assert copy["title"] == "Copy - Customer Onboarding Template"
    assert copy["messages"] == original["messages"]
    assert copy["metadata"] == original["metadata"] and copy["context"] == original["context"]
    assert client.current_session_id == copy_id
    default_copy = await client.copy_session(sid)
    assert client.load_session(default_copy)["title"] == "Copy of Technical Support Chat"


@pytest.mark.anyio
async def test_merge_orders_by_timestamp(client: OblixClient, tmp_path: Path) -> None:
    def doc(sid: str, stamps: list[str], meta: dict) -> str:
        path = tmp_path / f"{sid}.json"
        messages = [{"role": "user", "content": f"{sid}@{s}", "timestamp": s} for s in stamps]
        path.write_text(json.dumps({"id": sid, "title": sid, "messages": messages, "metadata": meta}))
        return str(path)

    a = await client.import_session(
        doc("a", ["2024-01-01T10:00:00Z", "2024-01-01T12:00:00Z"], {"x": 1, "k": "a"})
    )
    b = await client.import_session(
        doc("b", ["2024-01-01T11:00:00+00:00", "2024-01-01T13:00:00.500Z"], {"k": "b"})
    )
    merged = await client.merge_sessions([a, b], title="Combined Support Case", use_immediately=True)
    data = client.load_session(merged)
    assert [m["content"].split("@")[0] for m in data["messages"]] == ["a", "b", "a", "b"]
    assert data["title"] == "Combined Support Case"
    assert data["metadata"] == {"x": 1, "k": "b", "merged_from": ["a", "b"]}
    assert client.current_session_id == merged
    with pytest.raises(SessionNotFoundError):
        await client.merge_sessions([a, "missing-id"])
    with pytest.raises(OblixError):
        await client.merge_sessions([])
