"""Per-session prompt-state cache for in-process llama.cpp.

Resuming a conversation means evaluating its whole history again unless the model
still holds it. llama.cpp keeps one evaluated prompt per context, so as soon as another
session uses the model in between, the next turn pays the full cost again. This module
keeps the evaluated state of recent prompts and restores the longest one that the new
prompt extends.

How it works, per generation (all in the model's one inference thread):

* Before ``Llama.generate`` runs, :meth:`PromptStateCache.prepare` leaves the context
  holding exactly the new prompt, evaluated, with fresh logits: it reuses the prefix the
  context still holds ("live"), or restores a saved state (RAM, then disk) whose tokens
  are a longer prefix of the prompt, then evaluates the rest. ``generate`` then finds
  the prompt already evaluated and samples at once.
* During that evaluation it saves the state at the prompt's *save point* (below)
  (``llama_state_seq_get_data``: the sequence's KV cells, no logits), keyed by the
  tokens before it. States that the new one extends (the session's earlier turns) are
  dropped; the least recently used go first when the byte budget is exceeded.
* Only a state whose tokens are a prefix of the new prompt is restored, and restored
  states are never cut back. A trimmed history, whose tokens differ early, is therefore
  evaluated in full instead of resuming from a stale state.

Identical answers. llama.cpp's CPU kernels give a token's row slightly different
numbers depending on where it falls in its batch (the repacked quantised matmuls work
on blocks of 4 rows and finish leftover rows another way; measured on the packaged
model: logits off by up to 1.2 when a prompt is evaluated in two arbitrary pieces,
enough to flip a greedy choice, and bit-identical when every piece starts at a multiple
of 4). llama-cpp-python's own prefix reuse splits anywhere, so an answer could depend on
what the model evaluated before. Here every evaluation is split where a from-scratch
evaluation splits (multiples of ``n_batch``) and only at multiples of :data:`ALIGN`
besides: states are saved, and live prefixes reused, at the last multiple of
:data:`ALIGN` at least 2 tokens before the prompt's end. So the logits, and with greedy
decoding the answer, are bit for bit those of evaluating the prompt from scratch.

Sliding-window attention (the packaged Gemma 3: 512-token window on 15 of its 18
layers): a saved sequence state holds only the SWA cells still inside the window. Cutting
a context back to a shorter prefix is valid only if the cells the next token attends to
survive: a token at position ``p`` attends to ``[p - n_swa + 1, p]``, so the context's
lowest held position must be ``<= p - n_swa + 1`` (the rule llama.cpp's server applies
before reusing a slot's prompt). Every cut of the live context is checked against it; a
context evaluated from scratch holds every position (llama-cpp-python's default is a
full-size SWA cache), one resumed from a saved state only the window. Models whose memory
cannot be cut at all (recurrent, hybrid) reuse only what needs no cut.

A restore that fails (a corrupt or incompatible state) is logged and the prompt is
evaluated in full; the caller never sees an error from the cache.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import psutil

from oblix_llamacpp.saved_state import SavedState
from oblix_llamacpp.state_disk import DiskStateStore

if TYPE_CHECKING:
    import numpy as np

    from oblix_llamacpp.saved_state import Tokens

log = logging.getLogger(__name__)


#: Prompts shorter than this are not saved (evaluating them again costs little).
MIN_SAVE_TOKENS = 64
#: A saved state is restored only if it reuses at least this many more tokens than the
#: context already holds (restoring costs about a millisecond per 10 MB).
MIN_GAIN_TOKENS = 32
#: States are saved, and prefixes reused, at multiples of this many tokens (see above).
#: 4 suffices with the x86 kernels measured here; 16 leaves room for kernels that work on
#: larger row blocks, for at most 12 more tokens to evaluate per resumed prompt.
ALIGN = 16
#: The default RAM budget: 1/16 of the machine's memory, at most 1 GiB.
DEFAULT_MAX_BYTES = 1 << 30


def default_capacity() -> int:
    """The default ``kv_cache_bytes``: 1/16 of physical memory, capped at 1 GiB."""
    return int(min(DEFAULT_MAX_BYTES, psutil.virtual_memory().total // 16))


def aligned(count: int) -> int:
    """``count`` rounded down to a multiple of :data:`ALIGN`."""
    return max(0, count) // ALIGN * ALIGN


def save_point(n_tokens: int) -> int:
    """Where a prompt of ``n_tokens`` is saved: aligned, with at least 2 tokens after it."""
    return aligned(n_tokens - 2)


def common_prefix(a: Tokens, b: Tokens) -> int:
    """Length of the common prefix of two token arrays."""
    import numpy  # here, not with the plugin (saved_state.py says why)

    n = min(len(a), len(b))
    differ = numpy.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@attrs.define
class CacheUse:
    """What preparing one prompt did (reported on the request's last chunk)."""

    source: str = "none"  # "live", "ram", "disk", or "none" (evaluated in full)
    tokens_reused: int = 0
    tokens_evaluated: int = 0
    restore_ms: float = 0.0
    save_ms: float = 0.0

    @property
    def hit(self) -> bool:
        """Whether a saved state was restored."""
        return self.source in ("ram", "disk")

    def as_dict(self) -> dict[str, Any]:
        return {
            "hit": self.hit,
            "source": self.source,
            "tokens_reused": self.tokens_reused,
            "tokens_evaluated": self.tokens_evaluated,
            "restore_ms": round(self.restore_ms, 2),
            "save_ms": round(self.save_ms, 2),
        }


class _Counters:
    """Totals for ``describe()``; written by the inference thread, read anywhere."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: collections.Counter[str] = collections.Counter()
        self.times: collections.defaultdict[str, float] = collections.defaultdict(float)

    def add(self, use: CacheUse) -> None:
        with self.lock:
            self.values[f"{use.source}_prompts"] += 1
            self.values["tokens_reused"] += use.tokens_reused
            self.values["tokens_evaluated"] += use.tokens_evaluated
            self.times["restore_ms"] += use.restore_ms
            self.times["save_ms"] += use.save_ms

    def bump(self, name: str) -> None:
        with self.lock:
            self.values[name] += 1


class PromptStateCache:
    """Saved prompt states of one ``Llama`` context: a RAM tier and an optional disk tier.

    ``capacity_bytes`` bounds the RAM tier (0 keeps no state in RAM); ``disk`` adds a
    tier that outlives the process. Only the model's inference thread calls
    :meth:`prepare` and :meth:`flush`; :meth:`stats` may be called from anywhere.
    """

    def __init__(self, llama: Any, capacity_bytes: int, disk: DiskStateStore | None = None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama
        self.capacity_bytes = capacity_bytes
        self.disk = disk
        self.n_swa = (
            int(llama_cpp.llama_model_n_swa(llama.model)) if hasattr(llama_cpp, "llama_model_n_swa") else 0
        )
        self._can_cut = not (getattr(llama, "_is_recurrent", False) or getattr(llama, "_is_hybrid", False))
        # from-scratch evaluation: llama-cpp-python's n_batch chunks, llama.cpp's n_ubatch ubatches
        self._grid = int(min(llama.n_batch, getattr(llama.context_params, "n_ubatch", llama.n_batch)))
        self._frontier = 0  # the live context's first tokens evaluated as from scratch
        #: The prompt whose last batch was the context's last decode (its logits are current).
        self._decoded: np.ndarray | None = None
        self._states: collections.OrderedDict[bytes, SavedState] = collections.OrderedDict()
        self._bytes = 0
        self._pending: list[SavedState] = []  # saved, not yet written to disk
        self._counters = _Counters()
        self.last: CacheUse | None = None

    @property
    def saving(self) -> bool:
        return self.capacity_bytes > 0 or self.disk is not None

    # -- the hook into Llama.generate -------------------------------------------------

    def attach(self) -> None:
        """Route ``Llama.generate`` (used by every completion) through :meth:`prepare`."""
        generate: Callable[..., Iterator[int]] = self._llama.generate

        def generate_with_cache(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            if not args and kwargs.get("reset", True):
                self.last = self.prepare(tokens)
            return generate(tokens, *args, **kwargs)

        self._llama.generate = generate_with_cache

    # -- preparing a prompt ------------------------------------------------------------

    def prepare(self, prompt: Any) -> CacheUse:
        """Leave the context holding ``prompt`` evaluated as from scratch, reusing what it can."""
        import numpy  # here, not with the plugin (saved_state.py says why)

        llama = self._llama
        tokens = numpy.asarray(prompt, dtype=numpy.intc)
        n = len(tokens)
        boundary = save_point(n)
        if self._holds_exactly(tokens):  # evaluated already, nothing decoded since: sample at once
            use = CacheUse("live", tokens_reused=n)
            self._counters.add(use)
            return use
        live = llama.input_ids[: llama.n_tokens]
        reuse = aligned(min(common_prefix(live, tokens), self._frontier, boundary))
        if not self._can_keep(reuse, llama.n_tokens, self._pos_min()):
            reuse = 0
        use = CacheUse("live" if reuse else "none", tokens_reused=reuse)
        found = self._find(tokens, boundary, reuse + MIN_GAIN_TOKENS)
        if found is not None:
            reuse = self._restore(*found, use)  # 0 if it failed: the context was reset
        if reuse and reuse < llama.n_tokens and not llama._ctx.kv_cache_seq_rm(-1, reuse, -1):
            log.info("llama.cpp could not cut this model's context; evaluating the prompt in full")
            reuse = 0
        if reuse == 0:
            llama.reset()
            use.source, use.tokens_reused = "none", 0
        llama.n_tokens = reuse
        llama._requires_eval = True
        self._frontier = 0  # until the evaluation below completes
        self._decoded = None
        save = self.saving and boundary >= MIN_SAVE_TOKENS and boundary > reuse
        for start, stop in self._batches(reuse, n, boundary):
            llama.eval(tokens[start:stop].tolist())
            if save and stop == boundary:
                self._save(tokens[:boundary], use)
        self._frontier = boundary
        self._decoded = tokens
        use.tokens_evaluated = n - reuse
        self._counters.add(use)
        return use

    def _holds_exactly(self, tokens: np.ndarray) -> bool:
        """Whether the context holds exactly ``tokens`` and its logits are those this cache's
        evaluation of them left (a one-token answer decodes nothing after its prompt).

        llama-cpp-python's ``generate`` then samples at once (its exact-prompt hit), and
        the answer is the one a fresh evaluation gives: the same logits.
        """
        llama, decoded = self._llama, self._decoded
        return (
            decoded is not None
            and llama.n_tokens == len(tokens) == len(decoded)
            and not llama._requires_eval
            and common_prefix(decoded, tokens) == len(tokens)
            and common_prefix(llama.input_ids[: llama.n_tokens], tokens) == len(tokens)
        )

    def _batches(self, start: int, stop: int, boundary: int) -> Iterator[tuple[int, int]]:
        """Evaluation batches: split where a from-scratch evaluation splits, and at ``boundary``."""
        cuts = {start, stop, *range((start // self._grid + 1) * self._grid, stop, self._grid)}
        if start < boundary < stop:
            cuts.add(boundary)
        return itertools.pairwise(sorted(cuts))

    def _pos_min(self) -> int:
        memory = self._lib.llama_get_memory(self._llama._ctx.ctx)
        return int(self._lib.llama_memory_seq_pos_min(memory, 0)) if memory else 0

    def _can_keep(self, keep: int, held: int, pos_min: int) -> bool:
        """Whether cutting a context that holds ``held`` tokens back to ``keep`` is valid."""
        if keep >= held:
            return True
        if keep <= 0 or not self._can_cut:
            return False
        # the next token (at position ``keep``) attends to [keep - n_swa + 1, keep]
        return self.n_swa <= 0 or max(pos_min, 0) <= max(0, keep - self.n_swa + 1)

    def _find(self, tokens: Tokens, boundary: int, at_least: int) -> tuple[str, SavedState] | None:
        """The saved state that is the longest prefix of ``tokens`` (at least ``at_least`` long)."""
        best: tuple[str, SavedState] | None = None
        for state in self._states.values():
            count = len(state.tokens)
            if at_least <= count <= boundary and common_prefix(state.tokens, tokens) == count:
                best, at_least = ("ram", state), count + 1
        if best is not None:
            self._states.move_to_end(best[1].tokens.tobytes())
        if self.disk is not None and boundary >= at_least:
            disk = self.disk.find(tokens[:boundary], at_least)
            if disk is not None:
                best = ("disk", disk)
        return best

    def _restore(self, source: str, state: SavedState, use: CacheUse) -> int:
        """Load a saved state; returns the tokens it holds (0 if it failed)."""
        llama = self._llama
        started = time.perf_counter()
        try:
            size = len(state.data)
            buffer = (ctypes.c_uint8 * size).from_buffer(state.data)
            if self._lib.llama_state_seq_set_data(llama._ctx.ctx, buffer, size, 0) != size:
                raise RuntimeError("llama_state_seq_set_data rejected the state")
            count = len(state.tokens)
            llama.input_ids[:count] = state.tokens
            llama.n_tokens = count
            llama._requires_eval = True
            if self._lib.llama_memory_seq_pos_max(self._lib.llama_get_memory(llama._ctx.ctx), 0) != count - 1:
                raise RuntimeError("the restored state does not end where its tokens do")
        except Exception as exc:  # any failure: evaluate in full, never fail the request
            log.warning(
                "Prompt-state cache: could not restore a %s state (%s); evaluating the prompt in full",
                source,
                exc,
            )
            self._counters.bump("restore_failures")
            self._forget(state)
            llama.reset()
            return 0
        use.source, use.tokens_reused = source, count
        use.restore_ms = (time.perf_counter() - started) * 1000
        return count

    # -- saving ------------------------------------------------------------------------

    def _save(self, tokens: Tokens, use: CacheUse) -> None:
        started = time.perf_counter()
        try:
            ctx = self._llama._ctx.ctx
            size = int(self._lib.llama_state_seq_get_size(ctx, 0))
            data = bytearray(size)
            written = self._lib.llama_state_seq_get_data(
                ctx, (ctypes.c_uint8 * size).from_buffer(data), size, 0
            )
            if written != size:
                raise RuntimeError(f"llama_state_seq_get_data wrote {written} of {size} bytes")
        except (RuntimeError, MemoryError, ValueError) as exc:
            log.warning("Prompt-state cache: could not save the state (%s)", exc)
            return
        state = SavedState(tokens.copy(), data)
        self._store(state)
        if self.disk is not None:
            self._pending.append(state)
        use.save_ms = (time.perf_counter() - started) * 1000

    def _store(self, state: SavedState) -> None:
        """Keep ``state`` in RAM, dropping the states it extends, then the least recently used."""
        for key, old in list(self._states.items()):
            if len(old.tokens) <= len(state.tokens) and common_prefix(old.tokens, state.tokens) == len(
                old.tokens
            ):
                self._drop(key)
        if state.nbytes > self.capacity_bytes:
            return
        self._states[state.tokens.tobytes()] = state
        self._bytes += state.nbytes
        while self._bytes > self.capacity_bytes:
            self._drop(next(iter(self._states)))
            self._counters.bump("evictions")

    def _drop(self, key: bytes) -> None:
        self._bytes -= self._states.pop(key).nbytes

    def _forget(self, state: SavedState) -> None:
        key = state.tokens.tobytes()
        if key in self._states:
            self._drop(key)
        if self.disk is not None:
            self.disk.remove(state.tokens)

    def flush(self) -> None:
        """Write states saved since the last flush to the disk tier (call between requests)."""
        pending, self._pending = self._pending, []
        if self.disk is None:
            return
        for state in pending:
            with contextlib.suppress(OSError):  # the store logs its own failures
                self.disk.put(state)

    # -- reporting ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._counters.lock:
            values = dict(self._counters.values)
            times = dict(self._counters.times)
        hits = values.get("ram_prompts", 0) + values.get("disk_prompts", 0)
        return {
            "enabled": self.saving,
            "capacity_bytes": self.capacity_bytes,
            "bytes": self._bytes,
            "states": len(self._states),
            "hits": hits,
            "ram_hits": values.get("ram_prompts", 0),
            "disk_hits": values.get("disk_prompts", 0),
            "live_prefix_reuses": values.get("live_prompts", 0),
            "full_evaluations": values.get("none_prompts", 0),
            "tokens_reused": values.get("tokens_reused", 0),
            "tokens_evaluated": values.get("tokens_evaluated", 0),
            "restore_ms_total": round(times.get("restore_ms", 0.0), 2),
            "save_ms_total": round(times.get("save_ms", 0.0), 2),
            "evictions": values.get("evictions", 0),
            "restore_failures": values.get("restore_failures", 0),
            "disk_dir": str(self.disk.folder) if self.disk is not None else None,
        }
