"""A real `oblix server` under a scripted mixed workload: /v1/oblix/usage and /metrics tell the
truth of the requests made, and the dashboard at /ui, driven in a real headless Chromium
(Debian's ``chromium`` through Playwright), logs in, shows a session, draws its charts and
refuses a wrong key, and its Documents tab lists the home's workspaces with their sizes
(embedded by the real local embedder). Screenshots go to ``$OBLIX_SCREENSHOTS`` when set (docs/images)."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oblix_core.client import OblixClient
from oblix_core.usage.ledger import PRICES
from tests.server_process import OblixServer, model_toml, write_plugin_dist

KEY = "sk-oblix-dashboard-test-41c9"
LOCAL, CLOUD = "scripted:tiny", "scripted:gpt-4o-mini"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OblixServer]:
    plugin_dir = write_plugin_dist(tmp_path_factory.mktemp("plugin"))
    home = tmp_path_factory.mktemp("home")
    (home / "config.toml").write_text(
        model_toml("scripted", "tiny", local=True) + model_toml("scripted", "gpt-4o-mini", local=False)
    )
    notes = tmp_path_factory.mktemp("notes")
    (notes / "router.md").write_text("# Router\n\nHold the red button for 12 seconds to reset it.\n")
    (notes / "cake.md").write_text("# Cake\n\nBake the lemon cake at 180 degrees.\n")
    anyio.run(_workspaces, home, notes)
    with OblixServer(home, plugin_dir=plugin_dir, api_key=KEY, agents=True) as srv:
        yield srv


async def _workspaces(home: Path, notes: Path) -> None:
    """A shared workspace of two documents and a private one of one, in the server's home."""
    async with OblixClient(home=home) as client:
        await client.register_connector("directory", str(notes), alias="manuals")
        diary = await client.create_workspace("diary", private=True)
        await client.upload_document(str(notes / "cake.md"), workspace_id=diary, embed=True)


def _chat(server: OblixServer, text: str, model: str = "auto", **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    response = httpx.post(
        f"{server.base_url}/chat/completions", json=body, headers=server.auth | headers, timeout=60
    )
    assert response.status_code == 200, response.text
    return response


@pytest.fixture(scope="module")
def workload(server: OblixServer) -> list[dict[str, Any]]:
    """Answers over HTTP: routed ones, forced cloud ones, and a stored session."""
    answers = [_chat(server, f"routed question {i}").json() for i in range(3)]
    answers += [_chat(server, f"cloud question {i}", model=CLOUD).json() for i in range(4)]
    first = _chat(server, "Remember the word PAPAYA.", **{"X-Oblix-Session-Id": "new"})
    session = first.headers["X-Oblix-Session-Id"]
    answers.append(first.json() | {"session": session})
    answers.append(
        _chat(server, "Which word?", **{"X-Oblix-Session-Id": session}).json() | {"session": session}
    )
    return answers


def _get(server: OblixServer, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{server.root}{path}", params=params, headers=server.auth, timeout=30)


def test_usage_endpoint_tells_the_truth(server: OblixServer, workload: list[dict[str, Any]]) -> None:
    report = _get(server, "/v1/oblix/usage", by="model").json()
    made = Counter(a["model"] for a in workload)
    assert {r["key"]: r["requests"] for r in report["rows"]} == dict(made)
    for row in report["rows"]:
        answers = [a for a in workload if a["model"] == row["key"]]
        assert row["input_tokens"] == sum(a["usage"]["prompt_tokens"] for a in answers)
        assert row["output_tokens"] == sum(a["usage"]["completion_tokens"] for a in answers)
        price_in, price_out = PRICES["gpt-4o-mini"] if row["key"] == CLOUD else (0, 0)
        cost = (row["input_tokens"] * price_in + row["output_tokens"] * price_out) / 1e6
        assert row["cost_usd"] == pytest.approx(cost, abs=1e-9)
    assert report["total"]["requests"] == len(workload)
    assert report["total"]["local_share"] == pytest.approx(made[LOCAL] / len(workload), abs=1e-4)
    assert httpx.get(f"{server.root}/v1/oblix/usage", timeout=10).status_code == 401
    wrong = httpx.get(f"{server.root}/v1/oblix/usage", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert _get(server, "/v1/oblix/usage", since="someday").status_code == 400


def test_metrics_parse_and_count_the_requests(server: OblixServer, workload: list[dict[str, Any]]) -> None:
    assert httpx.get(f"{server.root}/metrics", timeout=10).status_code == 401
    response = _get(server, "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    answered: Counter[str] = Counter()
    for sample in families["oblix_requests"].samples:
        if sample.name == "oblix_requests_total":
            answered[sample.labels["model"]] += int(sample.value)
    assert answered == Counter(a["model"] for a in workload)
    tokens = {
        (s.labels["model"], s.labels["direction"]): s.value
        for s in families["oblix_tokens"].samples
        if s.name == "oblix_tokens_total"
    }
    assert tokens[(CLOUD, "output")] == sum(
        a["usage"]["completion_tokens"] for a in workload if a["model"] == CLOUD
    )
    counts = [s for s in families["oblix_request_latency_seconds"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in counts) == len(workload)
    available = {s.labels["model"]: s.value for s in families["oblix_model_available"].samples}
    assert available == {LOCAL: 1.0, CLOUD: 1.0}


def test_dashboard_data_endpoints(server: OblixServer, workload: list[dict[str, Any]]) -> None:
    session = workload[-1]["session"]
    found = _get(server, "/v1/oblix/sessions", q="PAPAYA").json()["data"]
    assert [s["id"] for s in found] == [session]
    messages = _get(server, f"/v1/oblix/sessions/{session}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert _get(server, "/v1/oblix/sessions/nope").status_code == 404
    decisions = _get(server, "/v1/oblix/decisions").json()["data"]
    assert [d["request_id"] for d in decisions[: len(workload)]] == [
        a["oblix"]["request_id"] for a in workload
    ][::-1]
    assert {m["id"] for m in _get(server, "/v1/oblix/models").json()["data"]} == {LOCAL, CLOUD}
    readings = _get(server, "/v1/oblix/agents").json()["data"]
    assert readings and {c["agent"] for c in readings[-1]["checks"]} >= {"resource_monitor"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright import sync_api as playwright  # the test extra installs it

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _shot(page: Any, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("OBLIX_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"dashboard-{name}.png"), full_page=True)


def _logged_in(server: OblixServer, browser: Any) -> Any:
    """A dashboard page logged in with the key, its usage cards drawn."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server.root}/ui")
    page.fill("#key", KEY)
    page.click("#login-form button")
    page.wait_for_selector(".card[data-name='requests'] b")
    return page


def test_a_wrong_key_is_refused(server: OblixServer, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page()
    page.goto(f"{server.root}/ui")
    page.fill("#key", "not-the-key")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:has-text('Wrong key')")
    assert page.is_hidden("#tabs") and page.is_hidden("#usage")
    _shot(page, "login", tmp_path)
    page.close()


def test_log_in_see_usage_charts_and_a_session(
    server: OblixServer, workload: list[dict[str, Any]], browser: Any, tmp_path: Path
) -> None:
    page = _logged_in(server, browser)
    assert page.text_content(".card[data-name='requests'] b") == str(len(workload))
    share = round(100 * sum(a["model"] == LOCAL for a in workload) / len(workload))
    assert page.text_content(".card[data-name='answered locally'] b") == f"{share}%"
    page.wait_for_selector("#chart-requests[data-drawn]")
    painted = page.evaluate(
        """() => { const c = document.getElementById('chart-requests');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""
    )
    assert painted > 500  # bars, not just the axis
    assert page.evaluate("() => document.cookie") == ""  # the key is in memory only
    _shot(page, "usage", tmp_path)
    page.click("nav button[data-tab='sessions']")
    page.fill("#search", "PAPAYA")
    page.click("#search-form button")
    page.click(f"#session-list tr.clickable:has-text('{workload[-1]['session']}')")
    page.wait_for_selector("#session-view .message.assistant")
    assert "Remember the word PAPAYA." in page.text_content("#session-view")
    _shot(page, "sessions", tmp_path)
    for tab, table in (("models", "#model-list"), ("agents", "#agent-list"), ("decisions", "#decision-list")):
        page.click(f"nav button[data-tab='{tab}']")
        page.wait_for_selector(f"{table} tr:nth-child(2) td:nth-child(2)")
        _shot(page, tab, tmp_path)
    assert CLOUD in page.text_content("#decision-list")
    page.close()


def test_the_documents_tab_lists_workspaces_and_their_sizes(
    server: OblixServer, browser: Any, tmp_path: Path
) -> None:
    page = _logged_in(server, browser)
    page.click("nav button[data-tab='documents']")
    page.wait_for_selector("#workspace-list tr:has-text('diary')")
    rows = page.eval_on_selector_all(
        "#workspace-list tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))"
    )
    header, body = rows[0], {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert header[:5] == ["workspace", "private", "documents", "chunks", "size"]
    assert set(body) == {"manuals", "diary"}
    assert (body["manuals"]["private"], body["manuals"]["documents"]) == ("no", "2")
    assert (body["diary"]["private"], body["diary"]["documents"]) == ("yes", "1")
    assert body["manuals"]["embedder"] == "local:all-minilm-l6-v2" and body["manuals"]["size"].endswith("B")
    assert int(body["manuals"]["chunks"]) >= 2 and int(body["diary"]["chunks"]) >= 1
    assert body["manuals"]["sources"] != "uploads" and body["diary"]["sources"] == "uploads"
    _shot(page, "documents", tmp_path)
    page.close()
