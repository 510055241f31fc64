"""Loop detection for small models: a sentence said twice, or a few words over and over.

Small base models fall into loops ("I'm a chatbot." 73 times, until the token limit).
:class:`LoopGuard` watches a streamed answer and says when to stop: when a sentence or
line (of at least :data:`MIN_WORDS` words) comes again, or when a run of 1 to
:data:`MAX_RUN` words repeats :data:`REPEATS` times in a row. A sentence that starts like
one already said is held back until it either differs (then it is released) or ends the
same (then it is dropped), so the answer never contains the repetition and ends cleanly
with the last new sentence. :func:`find_loop` applies the same rules to a finished text.
"""

from __future__ import annotations

import re

#: Sentences shorter than this (in words) may repeat ("Yes." in a list of answers).
MIN_WORDS = 2
#: The longest run of words checked for back-to-back repetition.
MAX_RUN = 6
#: How many times in a row a run must occur to be a loop.
REPEATS = 4

_END = re.compile(r"[.!?](?=\s)|\n")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def normalize(text: str) -> str:
    """Lower-case words only: the same sentence with other spacing or punctuation is equal."""
    return " ".join(_WORD.findall(text.lower()))


def _repeated_run(words: list[str]) -> bool:
    """Whether the last words are one run of 1-MAX_RUN words repeated REPEATS times."""
    for size in range(1, MAX_RUN + 1):
        span = size * REPEATS
        if len(words) < span:
            break
        tail = words[-span:]
        if all(tail[i] == tail[i % size] for i in range(span)):
            return True
    return False


class LoopGuard:
    """Feed the answer as it streams; get back what may be shown now and whether to stop."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.current = ""  # the sentence in progress
        self.shown = 0  # how much of ``current`` has been released
        self.words: list[str] = []  # the words released so far (for runs)
        self.stopped = False

    def _release(self, text: str) -> str:
        self.words += normalize(text).split()
        return text

    def feed(self, text: str) -> tuple[str, bool]:
        """``(text to show now, stop)``; once it says stop, the answer is complete as shown."""
        if self.stopped:
            return "", True
        self.current += text
        out: list[str] = []
        while match := _END.search(self.current):
            sentence = self.current[: match.end()]
            key = normalize(sentence)
            if len(key.split()) >= MIN_WORDS and key in self.seen:
                self.stopped = True  # said before: drop it, end the answer here
                return "".join(out), True
            if len(key.split()) >= MIN_WORDS:
                self.seen.add(key)
            out.append(self._release(sentence[self.shown :]))
            self.current, self.shown = self.current[match.end() :], 0
        key = normalize(self.current)
        if not (key and any(s.startswith(key) for s in self.seen)):  # not a repeat in the making
            out.append(self._release(self.current[self.shown :]))
            self.shown = len(self.current)
        if _repeated_run(self.words):
            self.stopped = True
            return "".join(out), True
        return "".join(out), False

    def finish(self) -> str:
        """At the end of the answer: the held-back start of a sentence, if any (it never repeated)."""
        if self.stopped:
            return ""
        rest, self.shown = self.current[self.shown :], len(self.current)
        return rest


def find_loop(text: str) -> str | None:
    """The first repeated sentence or word run in a finished ``text``, or None."""
    guard = LoopGuard()
    shown = []
    for piece in re.findall(r"\S+\s*|\s+", text):  # as a model streams it: word by word
        out, stop = guard.feed(piece)
        shown.append(out)
        if stop:
            return text[len("".join(shown)) :].strip()[:80] or "(a repeated run of words)"
    return None
