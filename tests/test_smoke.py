"""The smoke gate judged against the base model: what counts as a regression, and what is never tolerated."""

from __future__ import annotations

import pytest
from conftest import TINY_PROMPTS

from quantize.checks.gates import Gate, smoke_verdict
from quantize.checks.smoke import REPETITION, SmokePrompt, SmokeSuite, against_base, agreement, prompt_ids
from quantize.errors import ConfigError
from quantize.records import Reply

TEMPLATE = "<|user|>\n{prompt}</s>\n<|assistant|>\n"


def reply(problems: list[str], ids: list[int] | None = None) -> Reply:
    return Reply(prompt="p", reply="r", problems=problems, ids=ids or [1, 2, 3])


def test_agreement_counts_tokens_to_the_first_divergence_and_the_shared_positions():
    assert agreement([1, 2, 3, 4], [1, 2, 3, 4]) == (4, 1.0)
    assert agreement([1, 2, 9, 4], [1, 2, 3, 4]) == (2, 0.75)
    assert agreement([1, 2], [1, 2, 3, 4]) == (2, 0.5)  # stopping early is a divergence too
    assert agreement([], []) == (0, 1.0)


def test_a_problem_the_base_shares_is_not_held_against_the_variant():
    both = against_base(reply([REPETITION]), reply([REPETITION]))
    assert both.new_problems == [] and both.base_problems == [REPETITION]
    leak = "template leak: <|user|> in the reply"
    mine = against_base(reply([REPETITION, leak]), reply(["template leak: <|assistant|> in the reply"]))
    assert mine.new_problems == [REPETITION]  # a leak of another marker is the same kind of problem


def judged(tolerance: int, new: list[list[str]]):
    replies = [reply(n).model_copy(update={"new_problems": n}) for n in new]
    return smoke_verdict(Gate(smoke_tolerance=tolerance), replies)


def test_the_smoke_gate_is_a_count_with_a_tolerance_for_repetition_only():
    assert judged(0, [[], []]).passed and judged(0, [[], []]).value == "ok"
    assert not judged(0, [[REPETITION], []]).passed
    assert judged(1, [[REPETITION], []]).passed
    over = judged(1, [[REPETITION], [REPETITION], []])
    assert not over.passed and over.value.startswith("2 of 3 regress")
    # Never loosened: an empty reply or a leaked role marker the base does not share fails at any tolerance.
    assert not judged(5, [["empty reply"]]).passed
    assert not judged(5, [["template leak: <|user|> in the reply"]]).passed
    report_only = smoke_verdict(
        Gate(smoke="report"), [reply(["empty reply"]).model_copy(update={"new_problems": ["empty reply"]})]
    )
    assert report_only.passed and "1 of 1 regress" in report_only.value


def test_a_two_turn_prompt_goes_through_the_chat_template(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    two = SmokePrompt.model_validate(TINY_PROMPTS[2])
    ids = prompt_ids(TEMPLATE, two, "", tokenizer)
    text = tokenizer.decode(ids)
    assert text.count("<|user|>") == 2 and "<|assistant|>\nNice!</s>" in text and text.endswith("<|assistant|>\n")
    # The single-turn path (prompt_template) and the chat template agree on one turn.
    one = SmokePrompt(prompt=two.history[0].user)
    assert tokenizer.decode(prompt_ids(TEMPLATE, one, "", tokenizer)) == tokenizer.decode(
        tokenizer.apply_chat_template([{"role": "user", "content": one.prompt}], add_generation_prompt=True)
    )
    tokenizer.chat_template = None
    assert prompt_ids(TEMPLATE, two, "", tokenizer) is None  # cannot be rendered faithfully: not asked


def test_a_suite_with_a_prompt_twice_is_refused(tmp_path):
    from quantize.checks.smoke import load_suite

    path = tmp_path / "smoke.yaml"
    path.write_text("prompts:\n  - prompt: Hi\n  - prompt: Hi\n")
    with pytest.raises(ConfigError, match="appears twice"):
        load_suite(path)
    assert SmokeSuite(prompts=[SmokePrompt(prompt="Hi"), SmokePrompt(prompt="Hi", system="x")])
