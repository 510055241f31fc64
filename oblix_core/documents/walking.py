"""Walking a connector's directory: one file at a time, with ignore rules, inside the root.

``exclude_patterns`` and every ``.gitignore`` on the way (gitignore syntax, read with
``pathspec``; in a git work tree, those of the folders above the root too) leave files
out; ``.git`` and other version-control folders are never read. A symlink is followed
only when it points inside the root and to a path the rules keep, and a folder reached
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


def _gitignore(base: Path, folder: Path, spec_type: Any, specs: list[Any]) -> Any:
    """The rules in force in ``folder`` if it has a ``.gitignore``, as ``(lines, spec)``: the
    folders' above it, then its own, in one spec, so the deeper file's rules come last and win
    (a nested ``!pattern`` re-includes what a parent's rule left out, as in git). Paths are
    relative to ``base``, the work tree the rules belong to."""
    file = folder / ".gitignore"
    if not file.is_file():
        return None
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    prefix = folder.relative_to(base).as_posix()
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


def _work_tree(root: Path) -> Path:
    """The git work tree ``root`` is in (the nearest folder above it with a ``.git``), else ``root``:
    a registered sub-folder of a repository obeys the repository's ``.gitignore`` files too."""
    for folder in (root, *root.parents):
        if (folder / ".git").exists():
            return folder
    return root


@attrs.define
class _Rules:
    """What leaves a path out: ``exclude_patterns`` (relative to the registered ``root``) and the
    ``.gitignore`` files on the way (relative to ``base``, the work tree), deepest last."""

    root: Path
    base: Path
    excluded: Any
    spec_type: Any
    specs: list[Any] = attrs.field(factory=list)

    def enter(self, folder: Path) -> bool:
        """Take ``folder``'s ``.gitignore`` into account (until :meth:`leave`); whether it has one."""
        spec = _gitignore(self.base, folder, self.spec_type, self.specs)
        if spec is not None:
            self.specs.append(spec)
        return spec is not None

    def leave(self) -> None:
        self.specs.pop()

    def ignored(self, rel: str, is_dir: bool) -> bool:
        slash = "/" if is_dir else ""
        if self.excluded.match_file(rel + slash):
            return True
        if not self.specs:
            return False
        return bool(self.specs[-1][1].match_file((self.root / rel).relative_to(self.base).as_posix() + slash))

    def above_root(self) -> _Rules:
        """These rules as they stand at ``root`` (the work tree's ``.gitignore`` files above it)."""
        rules = _Rules(self.root, self.base, self.excluded, self.spec_type)
        for folder in reversed(self.root.parents):
            if folder.is_relative_to(self.base):
                rules.enter(folder)
        return rules


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
    rules = _Rules(real_root, _work_tree(real_root), excluded, pathspec.PathSpec).above_root()
    yield from _walk_folder(real_root, rules, set(), recursive)


def _walk_folder(
    folder: Path, rules: _Rules, seen: set[tuple[int, int]], recursive: bool
) -> Iterator[tuple[Path, str] | Skipped]:
    root = rules.root
    stat = folder.stat()
    if (stat.st_dev, stat.st_ino) in seen:
        yield Skipped(folder.relative_to(root).as_posix(), "a symlink loop (this folder was already walked)")
        return
    seen.add((stat.st_dev, stat.st_ino))
    try:
        entered = rules.enter(folder)
    except OSError as exc:  # its rules unknown, the folder is left out (never read unfiltered)
        reason = f"cannot read it or its .gitignore ({exc.strerror})"
        yield Skipped(folder.relative_to(root).as_posix(), reason)
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        yield Skipped(folder.relative_to(root).as_posix(), f"cannot list it: {exc.strerror}")
        entries = []
    for entry in entries:
        yield from _entry(Path(entry.path), rules, seen, recursive)
    if entered:
        rules.leave()


def _entry(
    path: Path, rules: _Rules, seen: set[tuple[int, int]], recursive: bool
) -> Iterator[tuple[Path, str] | Skipped]:
    root = rules.root
    rel = path.relative_to(root).as_posix()
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root):
            yield Skipped(rel, "a symlink to a path outside the registered root (refused)")
            return
        if _target_ignored(target, rules):
            yield Skipped(rel, "a symlink to an ignored or excluded path (refused)")
            return
    is_dir = path.is_dir()
    if (is_dir and path.name in SKIP_DIRS) or path.name == ".gitignore" or rules.ignored(rel, is_dir):
        return
    if is_dir:
        if recursive:
            yield from _walk_folder(path, rules, seen, recursive)
    elif path.is_file():
        yield path, rel
    elif not path.exists():
        yield Skipped(rel, "a broken symlink or a file that vanished")


def _target_ignored(target: Path, rules: _Rules) -> bool:
    """Whether a symlink's ``target`` (inside the root) is a path the walk leaves out: under a
    version-control folder, or matched (itself or a folder above it) by ``exclude_patterns`` or
    a ``.gitignore`` on its way -- a link must not read what the rules keep out."""
    parts = target.relative_to(rules.root).parts
    if any(part in SKIP_DIRS for part in parts) or (parts and parts[-1] == ".gitignore"):
        return True
    chain = rules.above_root()
    folder = rules.root
    for depth, part in enumerate(parts, start=1):
        chain.enter(folder)
        folder = folder / part
        if chain.ignored("/".join(parts[:depth]), depth < len(parts) or folder.is_dir()):
            return True
    return False
