"""``oblix plugins new NAME --kind KIND``: the package it writes, and (tier ``extras``) that
``pip install -e`` installs it in a fresh virtual environment where its own tests pass unchanged
and ``oblix plugins`` lists it as loaded, for every kind."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from oblix_core.cli.plugins_new import KINDS, write_package
from oblix_core.errors import ConfigError
from tests.support import commands


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_a_complete_package(tmp_path: Path, kind: str) -> None:
    target = write_package(f"my-{kind}", kind, tmp_path)
    assert target == tmp_path / f"oblix-my-{kind}"
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        f"oblix_my_{kind}/__init__.py",
        "pyproject.toml",
        f"tests/test_my_{kind}.py",
    ]
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"oblix-my-{kind}"
    assert project["project"]["entry-points"]["oblix"] == {f"my_{kind}": f"oblix_my_{kind}"}
    for path in target.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "{{" not in text, path
            if path.suffix == ".py":
                compile(text, str(path), "exec")
                assert "oblix_core" not in text, f"{path}: plugins import oblix.plugin only"


def test_the_command_writes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    done = commands.invoke("plugins", "new", "shout", "--kind", "backend", "--dir", str(tmp_path))
    assert done.exit_code == 0 and "pip install -e" in done.output
    again = commands.invoke("plugins", "new", "shout", "--kind", "backend", "--dir", str(tmp_path))
    assert again.exit_code == 1 and "already exists" in again.output
    bad = commands.invoke("plugins", "new", "Not A Name", "--kind", "store", "--dir", str(tmp_path))
    assert bad.exit_code == 1 and "cannot name a plugin" in bad.output
    with pytest.raises(ConfigError, match="Unknown plugin kind"):
        write_package("fine", "router", tmp_path)


def test_listing_plugins_writes_nothing_into_the_home(home: Path) -> None:
    listed = commands.invoke("plugins")
    assert listed.exit_code == 0, listed.output
    assert list(home.iterdir()) == []
    assert "created=no" in " ".join(listed.output.split())


def _fresh_venv(where: Path) -> Path:
    """A new venv that sees this environment's packages (Oblix, pytest, anyio) through a .pth."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "oblix-dev.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


@pytest.mark.extras
@pytest.mark.parametrize("kind", KINDS)
def test_the_package_installs_and_passes_its_own_tests(tmp_path: Path, kind: str) -> None:
    package = write_package(f"new_{kind}", kind, tmp_path)
    python = _fresh_venv(tmp_path / "venv")
    install = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(package)]
    installed = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    tested = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tested.returncode == 0 and " passed" in tested.stdout, tested.stdout + tested.stderr
    listed = subprocess.run(
        [python, "-m", "oblix_core", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=commands.environ(None, tmp_path / "home"),
    )
    mine = [p for p in json.loads(listed.stdout) if p["name"] == f"new_{kind}"]
    assert mine and mine[0]["status"] == "loaded" and mine[0]["package"] == f"oblix-new-{kind}"
