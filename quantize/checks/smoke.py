"""Smoke chat: does the variant still answer a chat prompt rendered with the model's template?

Fails on an empty reply, a reply that leaks the template's role markers (`<|user|>`),
degenerate repetition, or a `prompt_template` that disagrees with the chat template the
tokenizer ships (a broken template makes every other number meaningless).
"""

from __future__ import annotations

import re

from pydantic import Field

from ..config import Strict, load_yaml

MARKER = re.compile(r"<\|[^|>]{1,32}\|>|\[/?INST\]")


class SmokePrompt(Strict):
    prompt: str
    system: str | None = None


class SmokeSuite(Strict):
    max_new_tokens: int = Field(48, gt=0)
    prompts: list[SmokePrompt] = Field(min_length=1)


def load_suite(path) -> SmokeSuite:
    return load_yaml(path, "smoke suite", SmokeSuite)


def render(template: str, prompt: SmokePrompt, default_system: str) -> str:
    return template.format(system=prompt.system if prompt.system is not None else default_system, prompt=prompt.prompt)


def template_problem(template: str, default_system: str, tokenizer) -> str | None:
    """None when `prompt_template` renders what the tokenizer's own chat template renders."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = SmokePrompt(prompt="Name a colour.")
    messages = ([{"role": "system", "content": default_system}] if "{system}" in template else []) + [
        {"role": "user", "content": probe.prompt}
    ]
    theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours = render(template, probe, default_system)
    # Some templates write the BOS text themselves, which the tokenizer then adds as a token.
    bos = tokenizer.bos_token or ""
    if ours == theirs or (bos and theirs.startswith(bos) and ours == theirs[len(bos) :]):
        return None
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return (
        f"prompt_template disagrees with the tokenizer's chat template at character {at}: "
        f"ours {ours[max(0, at - 10) : at + 20]!r} vs theirs {theirs[max(0, at - 10) : at + 20]!r}"
    )


def reply_problems(reply: str, token_ids: list[int], template: str) -> list[str]:
    problems = []
    if not reply.strip():
        problems.append("empty reply")
    leaked = sorted(set(MARKER.findall(reply)) & set(MARKER.findall(template)))
    if leaked:
        problems.append(f"template leak: {', '.join(leaked)} in the reply")
    if len(token_ids) >= 16:
        grams = [tuple(token_ids[i : i + 4]) for i in range(len(token_ids) - 3)]
        long = [tuple(token_ids[i : i + 8]) for i in range(len(token_ids) - 7)]
        # Few distinct 4-grams (a short loop), or one 8-token phrase three times (a long loop).
        if len(set(grams)) / len(grams) < 0.35 or max(long.count(g) for g in set(long)) >= 3:
            problems.append("degenerate repetition")
    return problems
