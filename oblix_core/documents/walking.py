"""Walking a connector's directory: one file at a time, with ignore rules, inside the root.

``exclude_patterns`` and every ``.gitignore`` on the way (gitignore syntax, read with
``pathspec``) leave files out; ``.git`` and other version-control folders are never
read. A symlink is followed only when it points inside the root, and a folder reached
twice (a symlink loop) is walked once; each refusal is reported, not raised, so the
rest of the tree is still synced. Nothing is held but the folders on the current path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from oblix_core.documents.errors import DocumentsNotInstalledError

#: gitignore syntax, as git matches it (pathspec 1.0 and later).
_STYLE = "gitignore"
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".tox"})


@attrs.frozen
class Skipped:
    """A path that was not read, and why."""

    path: str
    reason: str


def _gitignore(root: Path, folder: Path, spec_type: Any, specs: list[Any]) -> Any:
    """The rules in force in ``folder`` if it has a ``.gitignore``, as ``(lines, spec)``: the
    folders' above it, then its own, in one spec, so the deeper file's rules come last and win
    (a nested ``!pattern`` re-includes what a parent's rule left out, as in git)."""
    file = folder / ".gitignore"
    if not file.is_file():
        return None
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    prefix = folder.relative_to(root).as_posix()
    if prefix != ".":  # a nested .gitignore speaks of paths below its own folder
        lines = [_anchor(line, prefix) for line in lines]
    combined = [*(specs[-1][0] if specs else ()), *lines]
    return combined, spec_type.from_lines(_STYLE, combined)


def _anchor(line: str, prefix: str) -> str:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return line
    negate = stripped.startswith("!")
    body = stripped[1:] if negate else stripped
    body = f"{prefix}/{body.lstrip('/')}" if "/" in body.rstrip("/") else f"{prefix}/**/{body}"
    return ("!" if negate else "") + body


def walk(
    root: Path, exclude_patterns: Sequence[str] = (), recursive: bool = True
) -> Iterator[tuple[Path, str] | Skipped]:
    """Each file under ``root`` to read, as ``(path, relative posix path)``, or a :class:`Skipped`."""
    try:
        import pathspec
    except ImportError as exc:
        raise DocumentsNotInstalledError(
            "Syncing a directory needs pathspec: pip install 'oblix[docs]'."
        ) from exc
    real_root = root.resolve()
    excluded = pathspec.PathSpec.from_lines(_STYLE, exclude_patterns)
    seen: set[tuple[int, int]] = set()
    specs: list[Any] = []
    yield from _walk_folder(real_root, real_root, excluded, specs, seen, recursive, pathspec.PathSpec)


def _ignored(rel: str, excluded: Any, specs: list[Any], is_dir: bool) -> bool:
    probe = rel + "/" if is_dir else rel
    return bool(excluded.match_file(probe)) or bool(specs and specs[-1][1].match_file(probe))


def _walk_folder(
    root: Path,
    folder: Path,
    excluded: Any,
    specs: list[Any],
    seen: set[tuple[int, int]],
    recursive: bool,
    spec_type: Any,
) -> Iterator[tuple[Path, str] | Skipped]:
    stat = folder.stat()
    if (stat.st_dev, stat.st_ino) in seen:
        yield Skipped(folder.relative_to(root).as_posix(), "a symlink loop (this folder was already walked)")
        return
    seen.add((stat.st_dev, stat.st_ino))
    spec = _gitignore(root, folder, spec_type, specs)
    if spec is not None:
        specs.append(spec)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        yield Skipped(folder.relative_to(root).as_posix(), f"cannot list it: {exc.strerror}")
        entries = []
    for entry in entries:
        yield from _entry(root, Path(entry.path), excluded, specs, seen, recursive, spec_type)
    if spec is not None:
        specs.pop()


def _entry(
    root: Path,
    path: Path,
    excluded: Any,
    specs: list[Any],
    seen: set[tuple[int, int]],
    recursive: bool,
    spec_type: Any,
) -> Iterator[tuple[Path, str] | Skipped]:
    rel = path.relative_to(root).as_posix()
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root):
            yield Skipped(rel, "a symlink to a path outside the registered root (refused)")
            return
        if _target_ignored(root, target, excluded, spec_type):
            yield Skipped(rel, "a symlink to an ignored or excluded path (refused)")
            return
    is_dir = path.is_dir()
    if (
        (is_dir and path.name in SKIP_DIRS)
        or path.name == ".gitignore"
        or _ignored(rel, excluded, specs, is_dir)
    ):
        return
    if is_dir:
        if recursive:
            yield from _walk_folder(root, path, excluded, specs, seen, recursive, spec_type)
    elif path.is_file():
        yield path, rel
    elif not path.exists():
        yield Skipped(rel, "a broken symlink or a file that vanished")


def _target_ignored(root: Path, target: Path, excluded: Any, spec_type: Any) -> bool:
    """Whether a symlink's ``target`` (inside ``root``) is a path the walk leaves out: under a
    version-control folder, or matched (itself or a folder above it) by ``exclude_patterns`` or
    a ``.gitignore`` on its way -- a link must not read what the rules keep out."""
    parts = target.relative_to(root).parts
    if any(part in SKIP_DIRS for part in parts) or (parts and parts[-1] == ".gitignore"):
        return True
    specs: list[Any] = []
    folder = root
    for depth, part in enumerate(parts, start=1):
        spec = _gitignore(root, folder, spec_type, specs)
        if spec is not None:
            specs.append(spec)
        folder = folder / part
        is_dir = depth < len(parts) or folder.is_dir()
        if _ignored("/".join(parts[:depth]), excluded, specs, is_dir):
            return True
    return False
