"""In-process llama.cpp inference with ``llama-cpp-python``.

Each loaded model has one long-lived inference thread that runs its generations one
at a time, in request order: a llama.cpp context is not thread-safe, so concurrent
requests queue there, never on the event loop. (One thread also keeps llama.cpp's
OpenMP worker team warm: starting a thread per request cost about 8 % of throughput.)
Tokens cross to the event loop as they are produced, scheduled on the loop without
blocking the generator, so neither waits for the other. Closing the stream (or
cancelling the task) sets a stop flag that the generator checks before every token,
so generation stops within one token; a request cancelled while queued never starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from collections.abc import AsyncGenerator, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from oblix.plugin import (
    ChatMessage,
    ConfigError,
    GenerationRequest,
    ModelBackend,
    PermanentModelError,
    StreamChunk,
    Usage,
    require,
)
from oblix_llamacpp.loops import LoopGuard
from oblix_llamacpp.options import byte_option, cache_dir_option, thread_option
from oblix_llamacpp.packaged import DEFAULT_MODEL, packaged_model_path
from oblix_llamacpp.prompts import FAMILY_FORMATS, FORMAT_DEFAULTS, PLAIN_FORMATS
from oblix_llamacpp.state_cache import PromptStateCache, default_capacity
from oblix_llamacpp.state_disk import DEFAULT_DISK_BYTES, DiskStateStore, model_fingerprint
from oblix_llamacpp.threads import ThreadChooser, batch_threads, physical_cores

log = logging.getLogger(__name__)

#: Answer length when the request sets no ``max_tokens`` (a format may set less: FORMAT_DEFAULTS).
DEFAULT_MAX_TOKENS = 512
_LLAMA_OPTIONS = {
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
}


@attrs.frozen
class _Job:
    """One queued generation: what to generate, where to send it, and its stop flag."""

    request: GenerationRequest
    send: Any  # anyio MemoryObjectSendStream
    token: Any  # anyio EventLoopToken of the requesting loop
    stop: threading.Event


def call_soon_threadsafe(token: Any, func: Any, *args: Any) -> None:
    """Schedule ``func(*args)`` on the event loop of ``token`` without waiting for it.

    Unlike ``anyio.from_thread.run_sync`` this does not block the generating thread on
    a round trip to the loop for every token (which costs throughput when llama.cpp's
    threads keep every core busy). Works under asyncio and trio.
    """
    native = token.native_token
    if hasattr(native, "call_soon_threadsafe"):  # asyncio event loop
        native.call_soon_threadsafe(func, *args)
    else:  # trio.lowlevel.TrioToken
        native.run_sync_soon(func, *args)


def _import_llama() -> Any:
    return require("llama_cpp", "llama-cpp", "The llama.cpp backend")


class LlamaCppBackend(ModelBackend):
    """A GGUF model loaded in this process.

    ``model_name`` is a GGUF path or ``"gemma-3-270m"`` (the packaged model). Options:
    ``n_ctx`` (context size, default 4096), ``n_threads`` (a fixed count; default
    ``"auto"``: chosen per request from the machine's state, every physical core the other
    processes leave free, at least one (:mod:`oblix_llamacpp.threads`): llama.cpp's threads
    spin while they wait for each other, so a thread more than the free cores costs far
    more than it brings, and one fewer leaves speed unused; see benchmarks/README.md),
    ``n_gpu_layers`` (GPU offload; -1 = all, needs a GPU build of llama.cpp),
    ``chat_format`` (``"vicuna"``/``"alpaca"`` plain prompts, or a llama.cpp chat format
    name; default: the model's own template, else ``"vicuna"``), ``seed``, and
    ``temperature`` (used when a request sets none; default 0.0, greedy, for the packaged
    270M base model, which answers best that way, and 0.7 for GGUF files), ``verbose``
    (llama.cpp's own logging). Whitespace the model emits just before it stops is
    dropped from the answer.

    Prompt-state cache (docs/llama-cache.md): the evaluated state of recent prompts is
    kept so that a session resumed after other sessions used the model continues from
    its saved state instead of evaluating its history again, with answers bit for bit
    those of a full evaluation. ``kv_cache_bytes`` (RAM budget; default 1/16 of the
    machine's memory, at most 1 GiB; 0 = none), ``kv_cache_dir`` (a disk tier that later
    processes use too: a folder, or ``True`` for the user cache folder; default none),
    ``kv_cache_disk_bytes`` (its budget, default 2 GiB). The last chunk of each answer
    carries ``info={"prompt_cache": {...}}`` (hit, source, tokens reused, restore and
    save times); ``describe()["prompt_cache"]`` has the totals.
    """

    model_type = "llama_cpp"
    default_local = True
    #: What a request may set besides temperature and max_tokens (any other option is an error).
    request_options = frozenset(_LLAMA_OPTIONS)

    def __init__(
        self,
        model_name: str,
        *,
        n_ctx: int = 4096,
        n_threads: int | str | None = None,
        n_gpu_layers: int = 0,
        chat_format: str | None = None,
        seed: int | None = None,
        temperature: float | None = None,
        verbose: bool = False,
        repetition_guard: bool = True,
        kv_cache_bytes: int | None = None,
        kv_cache_dir: str | Path | bool | None = None,
        kv_cache_disk_bytes: int = DEFAULT_DISK_BYTES,
        **kwargs: Any,
    ) -> None:
        self.model_path: Path | None = None if model_name == DEFAULT_MODEL else Path(model_name).expanduser()
        name = model_name if self.model_path is None else self.model_path.stem
        super().__init__(name, **kwargs)
        if not isinstance(n_ctx, int) or n_ctx < 64:
            raise ConfigError(f"n_ctx must be an integer of at least 64, got {n_ctx!r}.")
        self.n_ctx = n_ctx
        fixed = thread_option(n_threads)
        self._chooser = ThreadChooser() if fixed is None else None
        self.n_threads = fixed or physical_cores()  # the count in use (set per request when adaptive)
        self.kv_cache_bytes = byte_option("kv_cache_bytes", kv_cache_bytes, default_capacity())
        self.kv_cache_disk_bytes = byte_option("kv_cache_disk_bytes", kv_cache_disk_bytes, DEFAULT_DISK_BYTES)
        self.kv_cache_dir = cache_dir_option(kv_cache_dir)
        self._cache: PromptStateCache | None = None
        self.n_gpu_layers = n_gpu_layers
        self.chat_format = chat_format
        self.seed = seed
        self.temperature = (
            temperature if temperature is not None else (0.0 if self.model_path is None else 0.7)
        )
        self.verbose = verbose
        self.repetition_guard = repetition_guard
        self._llama: Any = None
        self._plain: Any = None  # a PLAIN_FORMATS function, or None to use a chat template
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._busy = threading.Event()  # set while a generation runs
        self.gpu_offload: bool | None = None  # known once started
        self._options: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        self._loading = False

    @property
    def default_context_window(self) -> int:
        return self.n_ctx

    async def start(self) -> None:
        """Check the model file (the packaged one is unpacked once per machine); nothing loads yet."""
        if self.model_path is None:
            self.model_path = await anyio.to_thread.run_sync(packaged_model_path)
        elif not self.model_path.is_file():
            raise ConfigError(
                f"No GGUF file at {self.model_path}. Pass the path of a .gguf model, or "
                f"{DEFAULT_MODEL!r} for the packaged model."
            )
        plain = self.chat_format in PLAIN_FORMATS
        options: dict[str, Any] = {
            "model_path": str(self.model_path),
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "n_gpu_layers": self.n_gpu_layers,
            "verbose": self.verbose,
        }
        if self._chooser is not None:  # adaptive generation; prompt evaluation as llama-cpp-python's default
            options["n_threads_batch"] = batch_threads()
        if self.seed is not None:
            options["seed"] = self.seed
        if self.chat_format and not plain:
            options["chat_format"] = self.chat_format
        self._options = options

    @property
    def warming(self) -> bool:
        """Whether the weights are being loaded for a request (it will answer, later)."""
        return self._loading

    async def prepare(self) -> None:
        """Load the weights on first use (``oblix run -m cloud`` never pays for them)."""
        if self._llama is None:
            await anyio.to_thread.run_sync(self._load_once)

    def _load_once(self) -> None:
        """Load the model unless another caller did (any thread, any event loop)."""
        with self._load_lock:
            if self._llama is not None:
                return
            self._loading = True
            try:
                llama = self._load()
            except (ValueError, RuntimeError, OSError) as exc:
                raise PermanentModelError(
                    f"llama.cpp could not load {self.model_path}: {exc}", model_id=self.model_id
                ) from exc
            finally:
                self._loading = False
            metadata = llama.metadata or {}
            if self.chat_format in PLAIN_FORMATS:
                self._plain = PLAIN_FORMATS[self.chat_format]
            elif self.chat_format is None and "tokenizer.chat_template" not in metadata:  # a base model
                family = metadata.get("general.architecture", "")
                self._plain = PLAIN_FORMATS[FAMILY_FORMATS.get(family, "vicuna")]
            self._llama = llama
            self._worker = threading.Thread(
                target=self._serve, name=f"oblix-llama-{self.model_name}", daemon=True
            )
            self._worker.start()
            if self._chooser is not None:
                self._chooser.start()

    def _import_checked(self) -> Any:
        """llama_cpp, imported (it loads the native library); warns if GPU layers cannot apply."""
        llama_cpp = _import_llama()
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        if self.n_gpu_layers and not self.gpu_offload:
            log.warning(
                "%s: n_gpu_layers=%s ignored: this llama-cpp-python build has no GPU support "
                "(reinstall it with CMAKE_ARGS='-DGGML_CUDA=on').",
                self.model_id,
                self.n_gpu_layers,
            )
        return llama_cpp

    def _load(self) -> Any:
        """Construct the ``Llama``; quiet unless ``verbose`` (llama.cpp logs context setup to fd 2)."""
        llama_cpp, options = self._import_checked(), self._options
        try:
            from llama_cpp._utils import suppress_stdout_stderr
        except ImportError:  # pragma: no cover - a future llama-cpp-python without it
            return llama_cpp.Llama(**options)
        with suppress_stdout_stderr(disable=self.verbose):
            return llama_cpp.Llama(**options)

    @property
    def default_answer_tokens(self) -> int | None:
        """Once loaded, what :meth:`_start` bounds an answer to when a request sets no
        ``max_tokens``: the prompt format's (160 for the packaged model's few-shot format)."""
        if self._llama is None:
            return None
        return int(self._format_defaults().get("max_tokens", DEFAULT_MAX_TOKENS))

    def _format_defaults(self) -> dict[str, Any]:
        """The prompt format's sampling defaults (``FORMAT_DEFAULTS``; none for a chat template)."""
        return FORMAT_DEFAULTS.get(getattr(self._plain, "__name__", ""), {})

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        if self._llama is None:
            return super().count_tokens(text)
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _start(self, request: GenerationRequest) -> tuple[Any, int]:
        """llama.cpp's stream of parts for ``request`` and the prompt's token count.

        Sampling options the request does not set come from the prompt format's defaults
        (the base-model format's repetition penalties and shorter answers).
        """
        llama = self._llama
        params: dict[str, Any] = {k: v for k, v in request.options.items() if k in _LLAMA_OPTIONS}
        extra_stops = list(params.pop("stop", None) or [])
        params["temperature"] = self.temperature if request.temperature is None else request.temperature
        defaults = self._format_defaults()
        longest = defaults.get("max_tokens", DEFAULT_MAX_TOKENS)
        params |= {k: v for k, v in defaults.items() if k != "max_tokens" and k not in params}
        if self._plain is not None:
            prompt, stops = self._plain(request.messages)
            prompt_tokens = len(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
            params["max_tokens"] = request.max_tokens or min(longest, self.n_ctx - prompt_tokens)
            parts = llama.create_completion(prompt, stream=True, stop=stops + extra_stops, **params)
            return parts, prompt_tokens
        prompt_tokens = self.count_message_tokens(request.messages)
        params["max_tokens"] = request.max_tokens or min(longest, self.n_ctx - prompt_tokens)
        messages = [m.to_dict() for m in request.messages]
        parts = llama.create_chat_completion(messages, stream=True, stop=extra_stops or None, **params)
        return parts, prompt_tokens

    def _parts(self, request: GenerationRequest, stop: threading.Event) -> Iterator[StreamChunk]:
        """Generate in the calling (worker) thread; checks ``stop`` before every token.

        With the repetition guard, an answer that starts repeating a sentence ends before
        the repetition, as a complete answer (finish reason ``stop``).
        """
        self._set_threads(self._llama)
        if self._cache is not None:
            self._cache.last = None  # set when llama.cpp starts on the prompt
        parts, prompt_tokens = self._start(request)
        guard = LoopGuard() if self.repetition_guard else None
        texts: list[str] = []
        held = ""
        finish = None
        try:
            for part in parts:
                if stop.is_set():
                    finish = "cancelled"
                    break
                choice = part["choices"][0]
                text = choice["text"] if self._plain is not None else choice["delta"].get("content")
                finish = choice.get("finish_reason") or finish
                if guard is not None and text:
                    text, looped = guard.feed(text)
                    if looped:
                        finish = "stop"
                if not texts:
                    text = (text or "").lstrip()
                if text and text.isspace():  # held back: whitespace before the stop is not part of the answer
                    held += text
                elif text:
                    text, held = held + text, ""
                    texts.append(text)
                    yield StreamChunk(text)
                if guard is not None and guard.stopped:
                    break
        finally:
            parts.close()
        rest = guard.finish().rstrip() if guard is not None and finish != "cancelled" else ""
        if rest:
            rest = (held + rest) if texts else rest.lstrip()
            texts.append(rest)
            yield StreamChunk(rest)
        output = self.count_tokens("".join(texts))
        use = self._cache.last if self._cache is not None else None
        info = {"prompt_cache": use.as_dict()} if use is not None else None
        yield StreamChunk(usage=Usage(prompt_tokens, output), finish_reason=finish, info=info)

    def _set_threads(self, llama: Any) -> None:
        """Adaptive threads: this request's count, given to llama.cpp if it changed."""
        if self._chooser is None:
            return
        wanted = self._chooser.choose()
        if wanted != self.n_threads:
            llama._ctx.set_n_threads(wanted, batch_threads())  # llama_set_n_threads: from the next eval
            self.n_threads = wanted

    @property
    def busy(self) -> bool:
        """Whether a generation is running right now."""
        return self._busy.is_set()

    def _serve(self) -> None:
        """The inference thread: run queued generations until told to stop (``None``)."""
        self._cache = self._open_cache()
        while (job := self._jobs.get()) is not None:
            self._busy.set()
            try:
                self._produce(job)
            finally:
                self._busy.clear()
                if self._cache is not None:
                    self._cache.flush()  # disk writes wait until the answer is complete

    def _open_cache(self) -> PromptStateCache | None:
        """The prompt-state cache for the loaded model (runs in the inference thread)."""
        try:
            disk = None
            if self.kv_cache_dir is not None and self.kv_cache_disk_bytes > 0:
                assert self.model_path is not None
                fingerprint = model_fingerprint(self._llama, self.model_path, self.n_gpu_layers)
                try:
                    disk = DiskStateStore(self.kv_cache_dir, self.kv_cache_disk_bytes, fingerprint)
                except OSError as exc:
                    log.warning("%s: prompt states will not be kept on disk: %s", self.model_id, exc)
            cache = PromptStateCache(self._llama, self.kv_cache_bytes, disk)
            cache.attach()
        except Exception:  # the cache is an optimisation: never take the model down with it
            log.exception("%s: prompt-state cache disabled", self.model_id)
            return None
        return cache

    def _produce(self, job: _Job) -> None:
        def deliver(item: object) -> None:  # runs in the event loop thread
            try:
                job.send.send_nowait(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                job.stop.set()  # the reader went away

        def emit(item: object) -> None:
            try:
                call_soon_threadsafe(job.token, deliver, item)
            except (RuntimeError, anyio.RunFinishedError):
                job.stop.set()  # the event loop is gone

        try:
            if not job.stop.is_set():  # not cancelled while queued
                for chunk in self._parts(job.request, job.stop):
                    emit(chunk)
                    if job.stop.is_set():
                        break
        except Exception as exc:  # reported to the reader as a model error
            emit(PermanentModelError(f"{self.model_id}: llama.cpp failed: {exc}", model_id=self.model_id))
        finally:
            with contextlib.suppress(RuntimeError, anyio.RunFinishedError):
                call_soon_threadsafe(job.token, job.send.close)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        await self.prepare()
        send, receive = anyio.create_memory_object_stream[object](math.inf)
        job = _Job(request, send, anyio.lowlevel.current_token(), threading.Event())
        self._jobs.put(job)
        try:
            async with receive:
                async for item in receive:
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, StreamChunk)
                    yield item
        finally:
            job.stop.set()

    @property
    def tokenizer_key(self) -> Hashable | None:
        """The loaded model's tokenizer (and prompt format); the estimate's key before it loads."""
        if self._llama is None:
            return super().tokenizer_key
        return ("llama_cpp", self.model_id, id(self._llama), self._plain is not None)

    def count_message_tokens(self, messages: Sequence[ChatMessage]) -> int:
        if self._plain is not None and self._llama is not None:
            prompt, _ = self._plain(messages)
            return self.count_tokens(prompt)
        return super().count_message_tokens(messages)

    async def aclose(self) -> None:
        llama, self._llama = self._llama, None
        worker, self._worker = self._worker, None
        if worker is not None:
            self._jobs.put(None)  # after the queued generations
            await anyio.to_thread.run_sync(worker.join)
        if self._chooser is not None:
            await anyio.to_thread.run_sync(self._chooser.stop)
        if llama is not None:
            llama.close()

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "path": str(self.model_path) if self.model_path else f"(packaged {DEFAULT_MODEL})",
            "n_threads": self.n_threads,
            "threads": self._chooser.describe() if self._chooser is not None else {"mode": "fixed"},
            "n_gpu_layers": self.n_gpu_layers,
            "gpu_offload_supported": self.gpu_offload,
            "prompt_format": getattr(self._plain, "__name__", None) or self.chat_format or "model template",
            "prompt_cache": self._cache.stats()
            if self._cache is not None
            else {
                "enabled": self.kv_cache_bytes > 0 or self.kv_cache_dir is not None,
                "capacity_bytes": self.kv_cache_bytes,
                "disk_dir": str(self.kv_cache_dir) if self.kv_cache_dir else None,
            },
        }
