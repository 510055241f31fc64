"""Documents red-team (issue 30): the bugs a hostile QA pass found, each on the real parts (the
packaged all-MiniLM GGUF in llama.cpp, the SQLite index on disk, real files, real symlinks and a
real kill -9), each failing before its fix."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from oblix_core.client import OblixClient
from oblix_core.documents.errors import DocumentError, EmbedderMismatchError, UnreadableDocumentError
from oblix_core.testing import ScriptedPlugin

pytest.importorskip("oblix_docs")
pytestmark = pytest.mark.anyio

ROUTER = "# Router\n\n## Reset\n\nTo reset the Zephyr-9 router, hold the red button for 12 seconds.\n"
CAKE = "# Baking\n\nBake the lemon cake at 180 degrees for forty minutes.\n"


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "router.md").write_text(ROUTER)
    (root / "cake.md").write_text(CAKE)
    return root


async def _names(client: OblixClient, workspace_id: str) -> list[str]:
    return [d["name"] for d in await client.get_documents_in_workspace(workspace_id)]


# -- sync -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"   \n\n \t\n", b"<html><body></body></html>"])
async def test_a_file_without_text_is_ingested_and_the_rest_of_the_folder_too(
    notes: Path, home: Path, content: bytes
) -> None:
    # was: an empty document (no chunk) gave the index an empty vector list, which it refused:
    # the whole register_connector failed on one empty file
    (notes / "empty.html").write_bytes(content)
    async with OblixClient(home=home) as client:
        result = await client.register_connector("directory", str(notes))
        assert result["stats"]["added"] == 3
        assert await _names(client, result["workspace_id"]) == ["cake.md", "empty.html", "router.md"]
        hits = await client.search_workspace(result["workspace_id"], "Zephyr-9 red button", 1)
        assert hits[0]["doc_name"] == "router.md"
        (again,) = await client.sync_connectors()
        assert again["unchanged"] == 3  # the empty one is not embedded again either


async def test_a_document_connector_whose_file_is_gone_is_reported_and_the_rest_synced(
    notes: Path, tmp_path: Path, home: Path
) -> None:
    # was: a raw FileNotFoundError out of sync_connectors(), the stale chunks kept, and every
    # connector after it left unsynced
    single = tmp_path / "single.md"
    single.write_text(CAKE)
    async with OblixClient(home=home) as client:
        document = await client.register_connector("document", str(single))
        folder = await client.register_connector("directory", str(notes))
        single.unlink()
        (notes / "new.md").write_text("# New\n\nA new note about kites.\n")
        reports = {r["connector_id"]: r for r in await client.sync_connectors()}
        gone = reports[document["connector_id"]]
        assert gone["skipped"][0]["path"] == "single.md" and gone["deleted"] == 1
        assert await _names(client, document["workspace_id"]) == []
        assert reports[folder["connector_id"]]["added"] == 1


async def test_an_unreadable_document_connector_is_reported_not_raised(tmp_path: Path, home: Path) -> None:
    single = tmp_path / "page.md"
    single.write_text(CAKE)
    async with OblixClient(home=home) as client:
        document = await client.register_connector("document", str(single))
        single.write_bytes(b"\x00\x01binary\x00" * 20)
        (report,) = await client.sync_connectors(document["connector_id"])
        assert report["skipped"][0]["path"] == "page.md" and "binary" in report["skipped"][0]["reason"]
        assert await _names(client, document["workspace_id"]) == []  # its old text no longer holds


async def test_a_fifo_is_never_read(tmp_path: Path, home: Path) -> None:
    # was: register_connector("document", FIFO) passed the type check and blocked for ever reading it
    pipe = tmp_path / "pipe.md"
    os.mkfifo(pipe)
    async with OblixClient(home=home) as client:
        with pytest.raises(DocumentError, match="is not a document"):
            await client.register_connector("document", str(pipe))
        single = tmp_path / "page.md"
        single.write_text(CAKE)
        document = await client.register_connector("document", str(single))
        single.unlink()
        os.mkfifo(single)  # the registered file replaced by a FIFO
        (report,) = await client.sync_connectors(document["connector_id"])
        assert "regular file" in report["skipped"][0]["reason"] and report["deleted"] == 1


#: As root, the permission test's process runs without the capabilities that let root read
#: any file (setpriv, util-linux): a file of mode 0 is then unreadable to it too.
UNPRIVILEGED = (
    [
        "setpriv",
        "--bounding-set",
        "-dac_override,-dac_read_search",
        "--inh-caps",
        "-dac_override,-dac_read_search",
    ]
    if os.geteuid() == 0
    else []
)
REGISTER = """
import asyncio, json, sys
from oblix_core.client import OblixClient

async def main():
    async with OblixClient(home=sys.argv[1]) as client:
        result = await client.register_connector("directory", sys.argv[2])
    print(json.dumps(result["stats"]))

asyncio.run(main())
"""


def test_permission_denied_files_folders_and_gitignores_are_reported(notes: Path, home: Path) -> None:
    # was: an unreadable .gitignore raised PermissionError out of the walk (the whole sync failed)
    (notes / "locked.md").write_text("locked")
    (notes / "closed").mkdir()
    (notes / "closed" / "inside.md").write_text("inside")
    (notes / "guarded").mkdir()
    (notes / "guarded" / "secret.md").write_text("kept out by the .gitignore")
    (notes / "guarded" / ".gitignore").write_text("secret.md\n")
    locked = (notes / "locked.md", notes / "closed", notes / "guarded" / ".gitignore")
    for path in locked:
        path.chmod(0)
    try:
        run = subprocess.run(
            [*UNPRIVILEGED, sys.executable, "-c", REGISTER, str(home), str(notes)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for path in locked:
            path.chmod(0o755)
    assert run.returncode == 0, run.stderr[-2000:]
    stats = json.loads(run.stdout.strip().splitlines()[-1])
    assert {s["path"] for s in stats["skipped"]} == {"locked.md", "closed", "guarded"}
    assert stats["added"] == 2


async def test_a_registered_folder_that_is_gone_keeps_its_documents_and_is_reported(
    notes: Path, home: Path
) -> None:
    # was: a raw FileNotFoundError (an unmounted drive must not empty the index either)
    async with OblixClient(home=home) as client:
        result = await client.register_connector("directory", str(notes))
        shutil.rmtree(notes)
        (report,) = await client.sync_connectors()
        assert "gone" in report["skipped"][0]["reason"] and report["deleted"] == 0
        assert await _names(client, result["workspace_id"]) == ["cake.md", "router.md"]


async def test_a_registered_folder_swapped_for_a_symlink_elsewhere_is_not_followed(
    notes: Path, tmp_path: Path, home: Path
) -> None:
    # was: the sync walked wherever the registered path now pointed (outside the registered root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.md").write_text("# Secret\n\nThe vault code is 7741.\n")
    async with OblixClient(home=home) as client:
        result = await client.register_connector("directory", str(notes))
        notes.rename(tmp_path / "moved")
        notes.symlink_to(elsewhere)
        (report,) = await client.sync_connectors()
        assert "symlink" in report["skipped"][0]["reason"]
        assert await _names(client, result["workspace_id"]) == ["cake.md", "router.md"]
        hits = await client.search_workspace(result["workspace_id"], "vault code", 3, mode="keyword")
        assert all(h["doc_name"] != "secret.md" for h in hits)


async def test_a_symlink_never_reads_what_gitignore_exclude_patterns_or_git_keep_out(
    notes: Path, home: Path
) -> None:
    # was: a link inside the root to an ignored file or folder (or into .git) was read: the rules
    # were checked against the link's own path only
    (notes / ".gitignore").write_text("secrets/\n")
    (notes / "secrets").mkdir()
    (notes / "secrets" / "key.md").write_text("# Key\n\nThe vault code is 7741.\n")
    (notes / "drafts").mkdir()
    (notes / "drafts" / "plan.md").write_text("# Plan\n\nThe vault code is 7741 too.\n")
    (notes / ".git").mkdir()
    (notes / ".git" / "config").write_text("[remote] url = https://token@example.com/vault-7741\n")
    (notes / "key-link.md").symlink_to(notes / "secrets" / "key.md")
    (notes / "secrets-link").symlink_to(notes / "secrets")
    (notes / "plan-link.md").symlink_to(notes / "drafts" / "plan.md")
    (notes / "git-link.txt").symlink_to(notes / ".git" / "config")
    (notes / "cake-link.md").symlink_to(notes / "cake.md")  # a link to a kept file is still read
    async with OblixClient(home=home) as client:
        result = await client.register_connector("directory", str(notes), exclude_patterns=["drafts"])
        names = await _names(client, result["workspace_id"])
        assert names == ["cake-link.md", "cake.md", "router.md"]
        refused = {s["path"] for s in result["stats"]["skipped"]}
        assert refused == {"key-link.md", "secrets-link", "plan-link.md", "git-link.txt"}
        hits = await client.search_workspace(result["workspace_id"], "vault code 7741", 5, mode="keyword")
        assert hits == []


GITIGNORES = {
    ".gitignore": "*.log\n/build/\ndocs/**/draft-*.md\nsecret/\n!keep/\n*.tmp\n!/top.tmp\n# a comment\n",
    "sub/.gitignore": "!important.log\n/local.md\nnested/*.md\n!nested/ok.md\n",
    "sub/deep/.gitignore": "keep.txt\n!*.log\n",
}
TREE = [
    "a.md", "x.log", "top.tmp", "b.tmp", "build/out.md", "src/build/kept.md", "docs/v1/draft-1.md",
    "docs/v1/final.md", "docs/draft-2.md", "secret/key.md", "sub/important.log", "sub/other.log",
    "sub/local.md", "sub/deep/local.md", "sub/nested/a.md", "sub/nested/ok.md", "sub/deep/keep.txt",
    "sub/deep/any.log", "sub/deep/important.log", "keep/k.md", "with space/é ü.md",
]  # fmt: skip


def test_the_walk_leaves_out_exactly_what_git_leaves_out(tmp_path: Path) -> None:
    # was: each .gitignore judged alone, so a nested !pattern never re-included what a parent's
    # rule left out (sub/important.log, sub/deep/any.log); git itself is the reference here
    from oblix_core.documents.walking import Skipped, walk

    if shutil.which("git") is None:
        pytest.fail("git is not installed: apt-get install -y git (./scripts/test does)")
    root = tmp_path / "repo"
    for rel in TREE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    for rel, rules in GITIGNORES.items():
        (root / rel).write_text(rules)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    listed = subprocess.run(
        ["git", "-c", "core.quotePath=false", "ls-files", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    expected = sorted(p for p in listed if not p.endswith(".gitignore"))
    assert "sub/important.log" in expected and "sub/deep/any.log" in expected  # the re-included
    assert sorted(f[1] for f in walk(root) if not isinstance(f, Skipped)) == expected


def test_a_registered_sub_folder_of_a_repository_obeys_the_repositorys_gitignore(tmp_path: Path) -> None:
    # was: only the .gitignore files from the registered folder down were read; git (and a
    # user) applies those of the repository above it too
    from oblix_core.documents.walking import Skipped, walk

    if shutil.which("git") is None:
        pytest.fail("git is not installed: apt-get install -y git (./scripts/test does)")
    repo = tmp_path / "repo"
    for rel in ("docs/guide.md", "docs/private/diary.md", "docs/api/notes.log", "docs/api/keep.log"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(rel)
    (repo / ".gitignore").write_text("docs/private/\n*.log\n")
    (repo / "docs" / "api" / ".gitignore").write_text("!keep.log\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "docs"],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    expected = sorted(p.removeprefix("docs/") for p in listed if not p.endswith(".gitignore"))
    assert expected == ["api/keep.log", "guide.md"]
    assert sorted(f[1] for f in walk(repo / "docs") if not isinstance(f, Skipped)) == expected


KILLED_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, anyio
    from oblix import Oblix

    async def main():  # a 0.1.3 script: it registers its folder on every run
        done = []
        def progress(event, path, chunks):
            done.append(path)
            if len(done) == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9 in the middle of the ingest
        async with Oblix(home=sys.argv[1]) as client:
            result = await client.register_connector("directory", sys.argv[2], progress=progress)
            print(result["workspace_id"], result["stats"]["added"], result["stats"]["unchanged"])

    anyio.run(main)
    """
)


def _script(home: Path, corpus: Path, kill_after: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", KILLED_SCRIPT, str(home), str(corpus), str(kill_after)],
        capture_output=True,
        text=True,
    )


def test_a_013_script_run_again_syncs_its_folder_instead_of_adding_a_workspace(tmp_path: Path) -> None:
    # was: each run of the script made a new workspace (corpus, corpus-2, ...) and embedded every
    # file again; a killed run, run again, left the index with the half and the whole
    from tests.test_documents import _index_state

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.md").write_text(f"# Part {i}\n\n" + f"Paragraph {i} about topic {i}. " * 5)
    first = _script(tmp_path / "whole", corpus)
    again = _script(tmp_path / "whole", corpus)
    ws, added, unchanged = again.stdout.split()
    assert ws == first.stdout.split()[0] and (added, unchanged) == ("0", "6"), again.stderr
    assert _script(tmp_path / "killed", corpus, kill_after=3).returncode == -9
    rerun = _script(tmp_path / "killed", corpus)
    assert rerun.stdout.split()[1:] == ["3", "3"], rerun.stderr
    assert _index_state(tmp_path / "killed") == _index_state(tmp_path / "whole")


KILLED_REEMBED = textwrap.dedent(
    """
    import os, signal, sys, anyio
    from oblix_core.client import OblixClient

    async def main():
        async with OblixClient(home=sys.argv[1]) as client:
            library = client._documents()
            workspace = library.workspace("corpus")
            done = []
            def progress(event, path, chunks):
                done.append(path)
                if len(done) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9 in the middle of a re-embed
            library.set_embedder(workspace, None, progress)

    anyio.run(main)
    """
)


async def test_a_killed_re_embed_is_refused_clearly_and_finished_by_update_workspace_embeddings(
    tmp_path: Path, home: Path
) -> None:
    # was: the workspace kept "<embedder> (re-embedding)" as its embedder: every search, sync and
    # update_workspace_embeddings (the fix the error names) failed on an unknown embedder, for good
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"doc{i}.md").write_text(f"# Part {i}\n\nParagraph {i} about topic {i}.\n")
    async with OblixClient(home=home) as client:
        ws = (await client.register_connector("directory", str(corpus), alias="corpus"))["workspace_id"]
    killed = subprocess.run([sys.executable, "-c", KILLED_REEMBED, str(home)], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    async with OblixClient(home=home) as client:
        with pytest.raises(EmbedderMismatchError, match=r"update_workspace_embeddings\('ws_"):
            await client.search_workspace(ws, "topic 3")
        assert await client.update_workspace_embeddings(ws) is True
        hits = await client.search_workspace(ws, "Paragraph 3 about topic 3", 1)
        assert hits[0]["doc_name"] == "doc3.md"
        (workspace,) = await client.list_workspaces()
        assert workspace["embedder"] == "local:all-minilm-l6-v2"
        docs = await client.get_documents_in_workspace(ws)
        assert {d["embedder"] for d in docs} == {"local:all-minilm-l6-v2"} and len(docs) == 5


async def test_two_files_of_one_name_are_two_documents_and_a_re_upload_replaces(
    tmp_path: Path, home: Path
) -> None:
    # was: a document's id came from its name alone, so uploading b/README.md after
    # a/README.md (or upload_directory of two projects) silently replaced the first
    texts = {"a": "Project alpha uses the Zephyr-9 router.", "b": "Project beta bakes cakes."}
    for project, text in texts.items():
        (tmp_path / project).mkdir()
        (tmp_path / project / "README.md").write_text(f"# {project}\n\n{text}\n")
    async with OblixClient(home=home) as client:
        ws = await client.create_workspace("readmes")
        for project in ("a", "b", "a"):  # the second "a" is the same file again
            await client.upload_document(str(tmp_path / project / "README.md"), workspace_id=ws, embed=True)
        assert len(await client.get_documents_in_workspace(ws)) == 2
        (hit,) = await client.search_workspace(ws, "Zephyr-9 router", 1)
        assert hit["text"].startswith("Project alpha")
        folders = await client.create_workspace("folders")
        for project in ("a", "b"):
            await client.upload_directory(str(tmp_path / project), folders)
        assert len(await client.get_documents_in_workspace(folders)) == 2


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"exclude_patterns": "*.md"}, "exclude_patterns must be a list"),  # was: each letter a glob
        ({"exclude_patterns": [3]}, "exclude_patterns must be a list"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),  # was: ValueError from range()
        ({"batch_size": "ten"}, "batch_size must be a positive integer"),  # was: ValueError from int()
        ({"batch_size": True}, "batch_size must be a positive integer"),
    ],
)
async def test_bad_register_connector_arguments_are_clear_errors_and_lose_nothing(
    notes: Path, home: Path, arguments: dict[str, Any], words: str
) -> None:
    async with OblixClient(home=home) as client:
        first = await client.register_connector("directory", str(notes), alias="notes")
        with pytest.raises(DocumentError, match=words):
            await client.register_connector(
                "directory", str(notes), workspace_id=first["workspace_id"], **arguments
            )
        # the string "*.md" as patterns "*", ".", "m", "d" excluded every file: all were deleted
        assert await _names(client, first["workspace_id"]) == ["cake.md", "router.md"]
        (connector,) = await client.list_connectors()
        assert connector["exclude_patterns"] == []


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda c, f, ws: c.upload_document(f, workspace_id=ws, metadata="x"), "must be a dict"),
        (lambda c, f, ws: c.upload_document(f, workspace_id=ws, metadata={"a": object()}), "JSON"),
        (lambda c, f, ws: c.upload_document(f, workspace_id=ws, metadata={"a": float("nan")}), "NaN"),
        (lambda c, f, ws: c.upload_document(f, name=5, workspace_id=ws), "must be strings"),
        (lambda c, f, ws: c.upload_directory(str(Path(f).parent), ws, metadata=[1]), "must be a dict"),
        (lambda c, f, ws: c.create_workspace("other", 5), "description must be a string"),
        (lambda c, f, ws: c.create_workspace("other", "", "x"), "must be a dict"),
    ],
)
async def test_bad_metadata_names_and_descriptions_are_clear_errors(
    notes: Path, home: Path, call: Any, words: str
) -> None:
    # was: TypeError / ValueError from deep inside (json, dict())
    async with OblixClient(home=home) as client:
        ws = await client.create_workspace("mine")
        with pytest.raises(DocumentError, match=words):
            await call(client, str(notes / "cake.md"), ws)
        assert await _names(client, ws) == [] and len(await client.list_workspaces()) == 1


async def test_a_connector_path_of_the_wrong_type_is_a_clear_error(home: Path) -> None:
    async with OblixClient(home=home) as client:
        with pytest.raises(DocumentError, match="path must be the path"):  # was: TypeError
            await client.register_connector("directory", None)  # type: ignore[arg-type]


async def test_a_connector_asking_another_embedder_than_its_workspaces_is_refused(
    notes: Path, home: Path
) -> None:
    # was: embedding_model silently ignored for an existing workspace (its own embedder used)
    async with OblixClient(home=home) as client:
        ws = await client.create_workspace("mine")
        with pytest.raises(EmbedderMismatchError, match="update_workspace_embeddings"):
            await client.register_connector(
                "directory", str(notes), "openai:text-embedding-3-small", "sk-test-key", workspace_id=ws
            )
        assert await client.list_connectors() == [] and await _names(client, ws) == []


@pytest.mark.parametrize("config", [5, {"x": 1}, "", ["local"]])
async def test_bad_embedding_configs_are_clear_errors(notes: Path, home: Path, config: Any) -> None:
    # was: AttributeError / KeyError
    async with OblixClient(home=home) as client:
        ws = (await client.register_connector("directory", str(notes)))["workspace_id"]
        with pytest.raises(DocumentError, match="embedding_config must be"):
            await client.update_workspace_embeddings(ws, config)
        with pytest.raises(DocumentError, match="set_default_embedding_model takes"):
            client.set_default_embedding_model(config)
        assert len(await client.search_workspace(ws, "lemon cake", 2)) == 2  # untouched


async def test_a_search_filter_that_is_not_a_dict_is_a_clear_error(notes: Path, home: Path) -> None:
    async with OblixClient(home=home) as client:
        ws = (await client.register_connector("directory", str(notes)))["workspace_id"]
        for where in ("connector_id", ["a"], 3):
            with pytest.raises(DocumentError, match="where must be a dict"):  # was: AttributeError
                await client.search_workspace(ws, "cake", where=where)  # type: ignore[arg-type]


async def test_an_empty_workspace_id_is_refused_not_ignored(notes: Path, home: Path) -> None:
    # was: workspace_id="" quietly meant "no workspace" and the prompt went to a cloud model
    plugin = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[plugin]) as client:
        await client.hook_model("scripted", "cloud", local=False)
        with pytest.raises(DocumentError, match="workspace_id must be"):
            await client.execute("what is in my diary?", workspace_id="", stream=False)
        with pytest.raises(DocumentError, match="workspace_id must be"):
            await client.execute("what is in my diary?", workspace_id=["  "], stream=False)
        assert not plugin.calls["cloud"]


async def test_a_connectors_workspace_deleted_elsewhere_does_not_break_every_request(
    notes: Path, home: Path
) -> None:
    # was: once `oblix docs rm` (another process) deleted the workspace of a connector this
    # client registered, every execute() of this client failed with WorkspaceNotFoundError
    plugin = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[plugin]) as client:
        await client.hook_model("scripted", "laptop", local=True)
        ws = (await client.register_connector("directory", str(notes)))["workspace_id"]
        async with OblixClient(home=home) as other:
            assert await other.delete_workspace(ws) is True
        result = await client.execute("How do I reset the Zephyr-9 router?", stream=False)
        assert result["response"] and result.get("sources", []) == []
        with pytest.raises(DocumentError, match="No workspace"):  # one asked for by name: an error
            await client.execute("How do I reset it?", workspace_id=ws, stream=False)


# -- privacy ----------------------------------------------------------------------------------


async def test_a_private_document_is_never_copied_into_a_shared_workspace(notes: Path, home: Path) -> None:
    # was: add_document_to_workspace copied a private document into a shared workspace, from
    # where its chunks reached cloud models (and a cloud embedder, if the workspace had one)
    plugin = ScriptedPlugin()
    async with OblixClient(home=home, plugins=[plugin], preference="cloud-first") as client:
        await client.hook_model("scripted", "cloud", local=False)
        await client.hook_model("scripted", "laptop", local=True)
        diary = await client.create_workspace("diary", private=True)
        uploaded = await client.upload_document(str(notes / "router.md"), workspace_id=diary, embed=True)
        assert isinstance(uploaded, dict)
        shared = await client.create_workspace("shared")
        with pytest.raises(DocumentError, match="private workspace 'diary'"):
            await client.add_document_to_workspace(uploaded["doc_id"], shared)
        assert await _names(client, shared) == []
        result = await client.execute("reset the Zephyr-9 router?", workspace_id=shared, stream=False)
        sent = " ".join(m.content for m in plugin.calls["cloud"][-1].messages)
        assert "red button" not in sent
        assert result["sources"] == []
        other = await client.create_workspace("journal", private=True)  # private to private: fine
        assert await client.add_document_to_workspace(uploaded["doc_id"], other) is True


# -- readers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "page",
    [
        b"<html><head><title>T</title><body><p>Visible body text.</p></body></html>",
        b"<html><head><meta charset=utf-8><p>Visible body text.</p>",
        b"<head><script>var hidden = 1;</script><style>p{}</style><p>Visible body text.</p></html>",
    ],
)
def test_html_without_a_closing_head_tag_keeps_its_visible_text(page: bytes) -> None:
    # HTML lets </head> (and <body>) be left out; was: everything after <head> hidden, so the
    # page was stored empty
    from oblix_docs.readers import HtmlReader

    blocks = HtmlReader().read(Path("page.html"), page)
    assert [b.text for b in blocks] == ["Visible body text."]


def test_html_hidden_by_attributes_is_not_read() -> None:
    # was: text a browser does not show (hidden, aria-hidden, display:none) was ingested
    from oblix_docs.readers import HtmlReader

    page = (
        b"<h1>Guide</h1><div hidden>Old price 10<div>nested old</div>EUR</div>"
        b'<span aria-hidden="true">icon</span><p>Shown text.</p>'
        b'<section style="display: none"><div>Draft paragraph.</div></section>'
        b'<div style="visibility:hidden">Invisible.</div><div>Also shown.</div>'
    )
    blocks = HtmlReader().read(Path("page.html"), page)
    assert [b.text for b in blocks] == ["Shown text.", "Also shown."]
    assert all(b.headings == ("Guide",) for b in blocks)


def test_the_server_takes_a_list_of_workspaces_and_refuses_bad_ones() -> None:
    pytest.importorskip("starlette")
    from oblix_server.documents_api import workspace_field
    from oblix_server.errors import APIError

    assert workspace_field({"oblix_workspace": ["diary", "shared"]}) == ("diary", "shared")
    assert workspace_field({"oblix_workspace": "diary"}) == "diary"
    for bad in ([], [""], ["a", 3], 3, {"a": 1}, "  ", True):
        with pytest.raises(APIError):
            workspace_field({"oblix_workspace": bad})


def _pdf(*objects: bytes) -> bytes:
    """A PDF written out by hand (objects numbered from 1, with an exact xref table)."""
    out, offsets = b"%PDF-1.4\n", []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (n, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


PAGE_TEXT = b"BT /F1 12 Tf 20 100 Td (Hold the red button to reset the router) Tj ET"
GOOD_PDF = _pdf(
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 300] /Contents 4 0 R "
    b"/Resources << /Font << /F1 5 0 R >> >> >>",
    b"<< /Length %d >>\nstream\n%s\nendstream" % (len(PAGE_TEXT), PAGE_TEXT),
    b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
)


def _damaged_pdfs(count: int) -> list[bytes]:
    """``GOOD_PDF`` with a few random bytes changed (seeded: the same files each run)."""
    rng = random.Random(30)
    damaged = []
    for _ in range(count):
        data = bytearray(GOOD_PDF)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        damaged.append(bytes(data))
    return damaged


def test_a_damaged_pdf_is_unreadable_never_another_error() -> None:
    # was: pypdf's LimitReachedError (a reference loop) or AttributeError escaped the reader
    from oblix_docs.readers import PdfReader

    assert [b.text for b in PdfReader().read(Path("good.pdf"), GOOD_PDF)] == [
        "Hold the red button to reset the router"
    ]
    for data in _damaged_pdfs(1000):
        with contextlib.suppress(UnreadableDocumentError):  # anything else fails the test
            PdfReader().read(Path("damaged.pdf"), data)


async def test_a_damaged_pdf_is_skipped_and_the_folder_still_synced(notes: Path, home: Path) -> None:
    # was: the reader's LimitReachedError ended register_connector: nothing after it was ingested
    (notes / "damaged.pdf").write_bytes(_damaged_pdfs(62)[61])  # a reference loop for pypdf
    (notes / "good.pdf").write_bytes(GOOD_PDF)
    async with OblixClient(home=home) as client:
        result = await client.register_connector("directory", str(notes))
        assert [s["path"] for s in result["stats"]["skipped"]] == ["damaged.pdf"]
        assert await _names(client, result["workspace_id"]) == ["cake.md", "good.pdf", "router.md"]


# -- chunking ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "我能吞下玻璃而不伤身体。这是一个测试文件用于检查编码。" * 300,  # Chinese: no spaces
        "吾輩は猫である名前はまだ無いどこで生れたかとんと見当がつかぬ" * 300,  # no spaces, no stops
        "QUJD" * 50_000,  # a long unbroken string (base64)
    ],
)
def test_a_text_without_spaces_is_cut_to_the_budget_and_nothing_lost(text: str) -> None:
    # was: one chunk of the whole paragraph (55,000 characters counted as one token): the
    # embedder saw its first 256 word pieces and a request's context got all of it
    from oblix_core.documents.chunking import DEFAULT_BUDGET, chunk_blocks, count_tokens
    from oblix_core.documents.records import TextBlock

    chunks = chunk_blocks("d", [TextBlock(text, 1)], overlap=0)
    assert len(chunks) > 10
    assert all(count_tokens(c.text) <= DEFAULT_BUDGET for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


async def test_a_chinese_document_is_chunked_and_found(tmp_path: Path, home: Path) -> None:
    folder = tmp_path / "zh"
    folder.mkdir()
    # 17 chunks of 4 distinct texts (x150: 61 chunks of the same 4, the same hits, 3.6 times the embedding)
    filler = "我能吞下玻璃而不伤身体。这是一个测试文件用于检查编码。" * 40
    (folder / "notes.txt").write_text(filler + "东京塔的高度是三百三十三米。" + filler, encoding="gb18030")
    async with OblixClient(home=home) as client:
        ws = (await client.register_connector("directory", str(folder)))["workspace_id"]
        (doc,) = await client.get_documents_in_workspace(ws)
        assert doc["chunk_count"] > 10
        hits = await client.search_workspace(ws, "东京塔的高度是多少米", 3)
        assert any("三百三十三米" in h["text"] for h in hits) and all(len(h["text"]) < 1000 for h in hits)


# -- command line -----------------------------------------------------------------------------


def test_docs_sync_of_an_unknown_workspace_is_an_error(home: Path) -> None:
    from tests.support import commands

    # was: "Nothing to sync" and exit status 0 for a misspelt workspace
    synced = commands.invoke("docs", "sync", "-w", "nowhere")
    assert synced.exit_code == 1 and "No workspace 'nowhere'" in synced.output


async def test_an_upload_in_a_local_only_session_goes_to_a_private_workspace(notes: Path, home: Path) -> None:
    # was: the shared "default" workspace, from where a cloud model could receive it
    async with OblixClient(home=home) as client:
        shared = await client.upload_document(str(notes / "cake.md"))
        await client.create_and_use_session(title="secret", metadata={"local_only": True})
        kept = await client.upload_document(str(notes / "router.md"))
        folder = await client.upload_directory(str(notes))
        workspaces = {w["name"]: w for w in await client.list_workspaces()}
        assert workspaces["default"]["private"] is False and workspaces["default-private"]["private"] is True
        assert folder["workspace_id"] == workspaces["default-private"]["id"]
        private = await _names(client, workspaces["default-private"]["id"])
        assert private == ["cake.md", "router.md"] and await _names(client, workspaces["default"]["id"]) == [
            "cake.md"
        ]
        assert isinstance(shared, str) and isinstance(kept, str)


async def test_upload_metadata_cannot_claim_a_connectors_key(notes: Path, tmp_path: Path, home: Path) -> None:
    # was: an upload carrying {"connector_id": C} was deleted by C's next sync
    async with OblixClient(home=home) as client:
        connector = await client.register_connector("directory", str(notes), alias="notes")
        other = tmp_path / "other.md"
        other.write_text("# Other\n\nA note about kites.\n")
        with pytest.raises(DocumentError, match="connector_id is kept by Oblix"):
            await client.upload_document(
                str(other),
                workspace_id=connector["workspace_id"],
                metadata={"connector_id": connector["connector_id"]},
            )
        assert await _names(client, connector["workspace_id"]) == ["cake.md", "router.md"]


def test_an_unknown_workspace_on_the_command_line_says_how_to_create_it(home: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "oblix_core", "docs", "search", "router", "-w", "nowhere"],
        capture_output=True,
        text=True,
        env=os.environ | {"OBLIX_HOME": str(home)},
        timeout=120,
    )
    assert run.returncode != 0 and "oblix docs add PATH -w NAME" in run.stderr + run.stdout
