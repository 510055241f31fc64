"""The prompt-state disk tier against crafted, foreign and damaged files (no model needed).

Whatever a ``.kvstate`` file holds, looking it up never raises: a malformed file is
logged, removed, and the lookup misses (the prompt is then evaluated in full). Headers
of every JSON shape and bodies truncated or garbled at seeded-random places are tried.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")

from oblix_llamacpp.saved_state import SavedState  # noqa: E402 - after the numpy check
from oblix_llamacpp.state_disk import MAGIC, SUFFIX, DiskStateStore, token_hash  # noqa: E402

SEED = 20260517
TOKENS = np.arange(100, 164, dtype=np.intc)
DATA = bytearray(random.Random(SEED).randbytes(4096))


@pytest.fixture
def disk(tmp_path: Path) -> DiskStateStore:
    return DiskStateStore(tmp_path, 1 << 30, {"model": "test", "size": 1})


def _path(disk: DiskStateStore) -> Path:
    return disk.folder / f"{len(TOKENS)}-{token_hash(TOKENS)}{SUFFIX}"


def _file(header: bytes, body: bytes = b"", declared: int | None = None) -> bytes:
    size = len(header) if declared is None else declared
    return MAGIC + struct.pack("<Q", size) + header + body


def _valid(disk: DiskStateStore) -> bytes:
    disk.put(SavedState(TOKENS, DATA))
    return _path(disk).read_bytes()


def _lookup(disk: DiskStateStore, content: bytes) -> SavedState | None:
    """Write ``content`` as the state of TOKENS and look it up; it must never raise."""
    _path(disk).write_bytes(content)
    found = disk.find(TOKENS, 1)
    if found is None:
        assert not _path(disk).exists(), "a malformed file must be removed"
    else:  # an undetectable change (e.g. whitespace in the header): the state is intact
        assert np.array_equal(found.tokens, TOKENS) and found.data == DATA
    return found


def test_a_valid_file_is_found(disk: DiskStateStore) -> None:
    _valid(disk)
    found = disk.find(np.concatenate([TOKENS, TOKENS]), 1)
    assert found is not None and found.data == DATA


def _headers(fingerprint: str) -> list[Any]:
    good = {"fingerprint": fingerprint, "n_tokens": len(TOKENS), "state_bytes": len(DATA)}
    return [
        [],
        [good],
        "a string",
        7,
        None,
        True,
        {},
        {"fingerprint": fingerprint},
        {**good, "fingerprint": ["not", "ours"]},
        {**good, "n_tokens": str(len(TOKENS))},
        {**good, "n_tokens": -1},
        {**good, "n_tokens": True},
        {**good, "n_tokens": 1e30},
        {**good, "n_tokens": len(TOKENS) + 1},
        {**good, "n_tokens": None},
        {**good, "state_bytes": -5},
        {**good, "state_bytes": 1 << 62},
        {**good, "state_bytes": 0.5},
        {**good, "state_bytes": [1]},
        {**good, "state_bytes": len(DATA) - 1},
    ]


@pytest.mark.parametrize("index", range(20))
def test_every_header_shape_is_dropped(disk: DiskStateStore, index: int) -> None:
    header = json.dumps(_headers(disk.fingerprint)[index]).encode()
    body = TOKENS.astype("<i4").tobytes() + bytes(DATA)
    assert _lookup(disk, _file(header, body)) is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        MAGIC,
        MAGIC + b"\x01\x02",
        _file(b"[" * 100_000 + b"]" * 100_000),  # nesting deeper than the JSON parser allows
        _file(b"\xff\xfe not utf-8"),
        _file(b'{"fingerprint": "x"', declared=1 << 63),  # a header size past any file
        _file(b"{}", declared=1 << 40),
        b"OBLIXKV0" + b"\x00" * 64,
    ],
)
def test_garbage_files_are_dropped(disk: DiskStateStore, content: bytes) -> None:
    assert _lookup(disk, content) is None


def test_truncated_and_garbled_bodies_never_raise(disk: DiskStateStore) -> None:
    """500 seeded-random damages of a valid file: cuts, byte flips, appended bytes."""
    valid = _valid(disk)
    rng = random.Random(SEED)
    outcomes = {"dropped": 0, "intact": 0}
    for trial in range(500):
        content = bytearray(valid)
        kind = trial % 3
        if kind == 0:
            del content[rng.randrange(len(content)) :]
        elif kind == 1:
            for _ in range(rng.randint(1, 4)):  # within the header and tokens: the payload is opaque
                content[rng.randrange(len(valid) - len(DATA))] = rng.randrange(256)
        else:
            content += rng.randbytes(rng.randint(1, 64))
        found = _lookup(disk, bytes(content))
        outcomes["dropped" if found is None else "intact"] += 1
    assert outcomes["dropped"] >= 450, outcomes
