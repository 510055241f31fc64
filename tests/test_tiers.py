"""The test tiers (:mod:`tests.support.tiers`): what a plain ``pytest`` selects, the marks each
file and fixture gives, the guard that keeps servers out of the fast tier, and trio's place."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support import tiers

ROOT = Path(__file__).resolve().parent.parent


def test_a_plain_pytest_selects_the_fast_tier() -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    addopts = options["addopts"]
    assert addopts[addopts.index("-m") + 1] == tiers.FAST_TIER
    assert tiers.FAST_TIER == "not slow and not llama and not reliability and not browser and not extras"


def test_every_file_the_tables_name_exists() -> None:
    """A renamed file would silently leave its tier (or trio): the tables must follow it."""
    files = {p.relative_to(ROOT / "tests").as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    for pattern in tiers.MODULE_TIERS:
        assert any(Path(f).match(pattern) for f in files), pattern
    assert files >= tiers.TRIO_MODULES, tiers.TRIO_MODULES - files
    assert set(tiers.PARAMETER_TIERS) <= files
    for test in tiers.TEST_TIERS:
        file, function = test.split("::")
        assert f"def {function}(" in (ROOT / "tests" / file).read_text(), test


@pytest.mark.parametrize(
    ("path", "fixtures", "expected"),
    [
        ("test_flags.py", ["tmp_path"], set()),
        ("test_health.py", ["redis_server", "tmp_path"], {"slow"}),
        ("test_migration.py", ["aws_env"], {"slow"}),
        ("test_dashboard.py", ["server", "browser"], {"slow", "browser"}),
        ("test_server_llama.py", [], {"slow", "llama"}),
        ("test_fresh_venv.py", [], {"extras", "llama"}),
        ("test_s3_ledger.py", [], {"slow"}),
        ("reliability/test_hostile_endpoints.py", [], {"reliability"}),
    ],
)
def test_marks_come_from_the_file_and_the_fixtures(
    path: str, fixtures: list[str], expected: set[str]
) -> None:
    assert tiers.tiers_of(ROOT / "tests" / path, fixtures) == expected


def test_single_tests_of_a_fast_file_can_be_in_a_tier() -> None:
    compat = ROOT / "tests" / "test_compat_012.py"
    assert tiers.tiers_of(compat, [], "test_server_with_model_flags") == {"slow"}
    assert tiers.tiers_of(compat, [], "test_chat_flag_errors") == set()


def test_parameters_that_name_a_real_server_put_a_test_in_its_tier() -> None:
    usage = ROOT / "tests" / "test_usage.py"
    assert tiers.tiers_of(usage, [], "test_hosts_on_one_store_share_the_ledger", "asyncio-redis") == {"slow"}
    assert tiers.tiers_of(usage, [], "test_totals_by_group_match_the_records", "s3") == {"slow"}
    assert tiers.tiers_of(usage, [], "test_totals_by_group_match_the_records", "sqlite-write-behind") == set()


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["/usr/bin/redis-server", "--port", "1"], "redis-server"),
        ([sys.executable, "-m", "oblix_core", "server", "--port", "1"], "oblix server"),
        ([sys.executable, "-m", "llama_cpp.server", "--model", "m"], "llama-cpp-python's server"),
        ([sys.executable, "-m", "venv", "/tmp/v"], "a fresh venv"),
        ([sys.executable, "-m", "oblix_core", "run", "server"], None),  # a CLI run is no server
        ([sys.executable, "-m", "pip", "install", "--target", "t", "plugin"], None),
    ],
)
def test_what_counts_as_starting_a_server(argv: list[str], what: str | None) -> None:
    assert tiers._server_started(argv) == what


def test_a_fast_tier_test_that_starts_a_server_fails_and_says_how_to_mark_it() -> None:
    with pytest.raises(RuntimeError, match=r"is in the fast tier but starts a fresh venv .*mark it"):
        subprocess.Popen([sys.executable, "-m", "venv", "--help"], stdout=subprocess.DEVNULL)


def test_a_cli_subprocess_is_allowed_in_the_fast_tier() -> None:
    done = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True, check=True)
    assert done.stdout == "ok\n"


@pytest.mark.anyio
async def test_async_tests_outside_the_core_promises_run_on_asyncio_only(
    request: pytest.FixtureRequest,
) -> None:
    assert "test_tiers.py" not in tiers.TRIO_MODULES
    assert request.node.callspec.params["anyio_backend"] == "asyncio"
    assert request.node.name.endswith("[asyncio]")
