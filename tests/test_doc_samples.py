"""Every code sample in README.md and docs/user-guide.md, run as written (issue 33 item 3).

A fence's info string says what a sample is and how it runs:

* ```` ```python ```` -- executed in a fresh process, in an empty folder with an empty
  ``$OBLIX_HOME``, once without any key and once with ``OPENAI_API_KEY`` and
  ``OPENAI_BASE_URL`` pointing at the loopback OpenAI-compatible server
  (``tests/openai_loopback.py``), so a sample's optional cloud part runs too;
* ```` ```python fragment ```` -- lines of a larger program: run inside the library
  example's frame, an ``async def main()`` where ``client`` is an ``OblixClient`` with the
  packaged model hooked and ``sid`` a session of it;
* ```` ```python result ```` -- the documented shape of a result: evaluated, and its keys
  compared with those of a real ``execute`` result;
* ```` ```bash ```` -- every line that runs an ``oblix`` command is run by bash, in order,
  in one folder holding a ``notes.txt`` and one home holding the reference session
  (id ``5f3e9a7b...``), with the loopback server in the environment as above; each must
  exit 0. Lines that run no ``oblix`` command (``pip install``, ``./scripts/test``: the
  set-up itself, which ``tests/test_fresh_venv.py`` and CI do) are not run;
* ```` ```bash synopsis ```` -- each ``oblix`` command is looked up in the command line:
  its (sub)commands must exist and every option shown must be one of theirs;
* ```` ```toml ```` -- read by the real config loader as ``config.toml``;
* ``llama`` in the info string marks a sample that needs the packaged model;
  ``no-run: <reason>`` one that cannot run here, with the reason in the document.

Other fences (the layout, plain text) are not code. A fence in a language this test does
not know fails, so a new kind of sample is noticed.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
from click.testing import CliRunner

from oblix_core.cli.main import build_cli
from oblix_core.client import OblixClient
from oblix_core.config.settings import load_config
from oblix_core.testing import ScriptedPlugin
from tests.conftest import FAST
from tests.openai_loopback import LoopbackOpenAI

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/user-guide.md")
DATA = Path(__file__).parent / "data"
#: Fence languages that are not code to run.
NOT_CODE = {"", "text"}
FENCE = re.compile(r"^```(\S*)(.*)$")
OBLIX_COMMAND = re.compile(r"(^|[|&;]\s*)oblix\s")
CLOUD_ENV = {"OPENAI_API_KEY": "sk-loopback-doc-samples"}


@attrs.frozen
class Sample:
    """One fenced block: where it is, its language, the words after it and its text."""

    doc: str
    line: int
    lang: str
    flags: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    def has(self, flag: str) -> bool:
        return flag in self.flags.replace(":", " ").split()

    def param(self) -> Any:
        marks = [pytest.mark.llama] if self.has("llama") else []
        return pytest.param(self, id=self.id, marks=marks)


def _samples() -> list[Sample]:
    found = []
    for doc in DOCS:
        lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
        opened: tuple[int, str, str] | None = None
        body: list[str] = []
        for number, line in enumerate(lines, 1):
            fence = FENCE.match(line)
            if fence is None:
                body.append(line)
            elif opened is None:
                opened, body = (number, fence.group(1), fence.group(2).strip()), []
            else:
                found.append(Sample(doc, opened[0], opened[1], opened[2], "\n".join(body) + "\n"))
                opened = None
    return found


SAMPLES = _samples()


def _of(lang: str, *, flag: str | None = None, without: tuple[str, ...] = ()) -> list[Any]:
    """The samples to run (a ``no-run`` sample is not run: its commands are checked against the
    CLI by the synopsis test instead)."""
    return [
        s.param()
        for s in SAMPLES
        if s.lang == lang
        and (flag is None or s.has(flag))
        and not any(s.has(w) for w in (*without, "no-run"))
    ]


def test_every_fence_is_a_kind_of_sample_this_test_runs() -> None:
    known = {"python", "bash", "toml"} | NOT_CODE
    assert [s.id for s in SAMPLES if s.lang not in known] == []
    unexplained = [
        s.id for s in SAMPLES if s.has("no-run") and not s.flags.partition("no-run")[2].strip(": ")
    ]
    assert unexplained == []  # every sample that is not run says why
    assert {"README.md", "docs/user-guide.md"} <= {s.doc for s in SAMPLES if s.lang == "python"}


@pytest.fixture(scope="module")
def loopback() -> Iterator[LoopbackOpenAI]:
    with LoopbackOpenAI() as server:
        yield server


def _environ(home: Path, extra: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OBLIX_", "ANTHROPIC_"))}
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join([bin_dir, keep.get("PATH", "")])
    return keep | {"OBLIX_HOME": str(home), "PATH": path, "COLUMNS": "100"} | extra


# -- python --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", [False, True], ids=["no-key", "loopback-cloud"])
@pytest.mark.parametrize("sample", _of("python", without=("result", "fragment")))
def test_python_sample_runs(sample: Sample, cloud: bool, loopback: LoopbackOpenAI, tmp_path: Path) -> None:
    env = CLOUD_ENV | {"OPENAI_BASE_URL": loopback.url} if cloud else {}
    _run_python(sample, sample.code, tmp_path, env)


FRAGMENT_FRAME = """\
import asyncio
from oblix import ModelType, OblixClient


async def main():
    client = OblixClient()
    await client.hook_model(ModelType.LLAMA_CPP, "gemma-3-270m")
    sid = await client.create_session(title="fragment")
{fragment}
    await client.shutdown()


asyncio.run(main())
"""


@pytest.mark.parametrize("sample", _of("python", flag="fragment"))
def test_python_fragment_runs_in_the_library_frame(sample: Sample, tmp_path: Path) -> None:
    body = "\n".join(f"    {line}" if line.strip() else "" for line in sample.code.splitlines())
    _run_python(sample, FRAGMENT_FRAME.format(fragment=body), tmp_path, {})


def _run_python(sample: Sample, code: str, folder: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        env=_environ(folder / "home", env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"{sample.id}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("sample", _of("python", flag="result"))
async def test_a_documented_result_has_the_keys_of_a_real_one(sample: Sample, home: Path) -> None:
    text = sample.code.replace(", ...}", "}").replace("{...}", "{}").replace("[...]", "[]")
    documented = ast.literal_eval(text.replace("...", "None"))  # "..." elides a value or the rest
    async with OblixClient(home=home, plugins=[ScriptedPlugin()], execution=FAST) as client:
        await client.hook_model("scripted", "echo")
        real = await client.execute("Hello", stream=False)
    assert set(documented) == set(real)
    for part in ("metrics", "routing_decision"):
        assert set(documented[part]) <= set(real[part]), (part, set(documented[part]) - set(real[part]))


# -- bash ----------------------------------------------------------------------------------------


def _command_lines(code: str) -> list[str]:
    lines = [line.strip() for line in code.splitlines()]
    return [line for line in lines if line and not line.startswith("#") and OBLIX_COMMAND.search(line)]


@pytest.mark.parametrize("sample", _of("bash", without=("synopsis",)))
def test_shell_sample_runs_line_by_line(sample: Sample, loopback: LoopbackOpenAI, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _environ(home, CLOUD_ENV | {"OPENAI_BASE_URL": loopback.url})
    (tmp_path / "notes.txt").write_text("Oblix routes prompts between local and cloud models.\n")
    imported = subprocess.run(
        ["oblix", "sessions", "import", str(DATA / "reference_session.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    lines = _command_lines(sample.code)
    for line in lines:
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{sample.id}: {line}\n{done.stdout}\n{done.stderr}"


# -- bash synopsis -------------------------------------------------------------------------------


def _options(command: click.Command) -> set[str]:
    return {name for param in command.params for name in (*param.opts, *param.secondary_opts)}


def _lookup(root: click.Group, words: list[str]) -> tuple[list[click.Command], list[str]]:
    """The command(s) ``words`` name (``a|b`` names either) and the words after them."""
    ctx = click.Context(root)
    found: list[click.Command] = [root]
    rest = list(words)
    while rest:
        if rest[0].startswith("-") and rest[0].lstrip("[") in _options(root) and found == [root]:
            rest = rest[2:] if not _is_flag(root, rest[0]) else rest[1:]
            continue
        groups = [c for c in found if isinstance(c, click.Group)]
        names = rest[0].strip("[]").split("|")
        subs = [g.get_command(ctx, n) for g in groups for n in names]
        if not groups or not all(subs):
            break
        found = [s for s in subs if s is not None]
        rest = rest[1:]
    return found, rest


def _is_flag(command: click.Command, name: str) -> bool:
    return any(name in p.opts and isinstance(p, click.Option) and p.is_flag for p in command.params)


def _synopsis_commands(code: str) -> Iterator[list[str]]:
    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        starts = [i for i, w in enumerate(words) if w == "oblix"]
        for start, end in zip(starts, [*starts[1:], len(words)], strict=True):
            yield [w for w in words[start + 1 : end] if w not in ("|", "&&")]


@pytest.mark.parametrize(
    "sample", [s.param() for s in SAMPLES if s.lang == "bash" and (s.has("synopsis") or s.has("no-run"))]
)
def test_synopsis_names_commands_and_options_that_exist(sample: Sample) -> None:
    root = build_cli()
    checked = 0
    for words in _synopsis_commands(sample.code):
        commands, rest = _lookup(root, words)
        known = set().union(*(_options(c) for c in commands)) | _options(root) | {"-h", "--help"}
        shown = [m.group(1) for w in rest if (m := re.match(r"^\[?(--?[A-Za-z][\w-]*)", w))]
        unknown = [o for o in shown if o not in known]
        assert unknown == [], (sample.id, words, [c.name for c in commands])
        checked += 1
    assert checked > 0


def test_option_limits_are_in_the_synopsis_and_help() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    server_line = next(line for line in readme.splitlines() if line.startswith("oblix server"))
    assert "--api-key KEY" in server_line and "8+ characters" in server_line
    shown = CliRunner().invoke(build_cli(), ["server", "--help"], terminal_width=200)
    assert shown.exit_code == 0 and "at least 8 characters" in " ".join(shown.output.split())


# -- toml ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", _of("toml"))
def test_toml_sample_is_a_valid_config(sample: Sample, tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(sample.code)
    config = load_config(tmp_path)
    assert config is not None
