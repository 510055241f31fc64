"""The loop guard and the base-model prompt format (pure functions; no model needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")

from oblix_core.models.backend import ChatMessage
from oblix_llamacpp.loops import LoopGuard, find_loop
from oblix_llamacpp.prompts import FAMILY_FORMATS, FEWSHOT_EXAMPLES, PLAIN_FORMATS, fewshot


def stream(pieces: list[str]) -> tuple[str, bool]:
    """What a guarded stream shows, and whether the guard stopped it."""
    guard, shown = LoopGuard(), []
    for piece in pieces:
        out, stop = guard.feed(piece)
        shown.append(out)
        if stop:
            return "".join(shown), True
    return "".join(shown) + guard.finish(), False


def test_a_repeated_sentence_is_dropped_and_the_answer_ends() -> None:
    pieces = ["I", "'m", " a", " chat", "bot", ".", " I", "'m", " a", " chat", "bot", ".", " I", "'m"]
    assert stream(pieces) == ("I'm a chatbot.", True)


def test_a_repeated_line_without_punctuation_is_a_loop() -> None:
    pieces = ["- open", " the model\n", "- set", " it\n", "- open", " the", " model\n", "more"]
    assert stream(pieces) == ("- open the model\n- set it\n", True)


def test_a_sentence_that_only_starts_alike_is_released() -> None:
    pieces = ["The", " sky", " is", " blue", ".", " The", " sky", " is", " wide", ".", " The", " end"]
    assert stream(pieces) == ("The sky is blue. The sky is wide. The end", False)


def test_the_same_sentence_with_other_case_and_spacing_is_a_repeat() -> None:
    assert stream(["Rome is old. ", "ROME  is old! ", "x"]) == ("Rome is old. ", True)


def test_short_sentences_and_lists_may_repeat_words() -> None:
    text = "Yes. Yes. 1. Red\n2. Blue\n3. Red apple\nA very very good day."
    assert stream([text[i : i + 3] for i in range(0, len(text), 3)]) == (text, False)
    assert find_loop(text) is None


def test_a_run_of_words_repeated_four_times_stops() -> None:
    shown, stopped = stream([" blue"] * 10)
    assert stopped and shown.split() == ["blue"] * 4
    shown, stopped = stream(["go ", "on ", "and "] * 6)
    assert stopped and len(shown.split()) == 12
    assert find_loop("It is blue blue blue blue blue and more") is not None


def test_find_loop_names_the_repetition() -> None:
    assert find_loop("I'm a chatbot. I'm a chatbot. I'm a chatbot.") == "I'm a chatbot. I'm a chatbot."
    assert find_loop("Rome is the capital of Italy. It is old.") is None
    assert find_loop("") is None


def test_fewshot_prompt_frames_the_question_after_worked_examples() -> None:
    prompt, stops = fewshot([ChatMessage("system", "Be brief."), ChatMessage("user", "Why?\n\n\nBecause.")])
    blocks = prompt.split("\n\n")
    assert blocks[0].endswith("Be brief.")
    assert len(blocks) == len(FEWSHOT_EXAMPLES) + 2
    assert blocks[-1] == "Question: Why?\nBecause.\nAnswer:"  # no blank line inside a block
    assert "\n\n" in stops and "\nQuestion:" in stops


def test_fewshot_prompt_keeps_earlier_turns_as_pairs() -> None:
    messages = [
        ChatMessage("user", "Capital of France?"),
        ChatMessage("assistant", "Paris."),
        ChatMessage("user", "And Italy?"),
    ]
    prompt, _ = fewshot(messages)
    assert prompt.endswith("Question: Capital of France?\nAnswer: Paris.\n\nQuestion: And Italy?\nAnswer:")


def test_the_packaged_models_family_gets_the_fewshot_format() -> None:
    assert PLAIN_FORMATS[FAMILY_FORMATS["gemma3"]] is fewshot
