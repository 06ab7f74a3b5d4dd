"""Smoke chat: does the variant still answer chat prompts rendered with the model's template,
and where it does not, is that the quantization or the model?

Each reply is judged alone (empty, leaking the template's role markers like `<|user|>`, or
degenerate repetition) and then against the unquantized model's own greedy reply to the same
ids: a problem the base reply shares is the model's weak spot, recorded but not held against
the variant. A `prompt_template` that disagrees with the chat template the tokenizer ships is
its own failure (a broken template makes every other number meaningless).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field, model_validator

from ..config import FieldProblem, Strict, load_yaml
from ..records import Reply

MARKER = re.compile(r"<\|[^|>]{1,32}\|>|\[/?INST\]")
EMPTY, LEAK, REPETITION = "empty reply", "template leak", "degenerate repetition"


class Turn(Strict):
    """An earlier exchange of a multi-turn prompt: what the user said and what the assistant answered."""

    user: str
    assistant: str


class SmokePrompt(Strict):
    prompt: str
    system: str | None = None
    kind: str = Field(default="", description="what the prompt tests (facts, translation, code, ...), for reports")
    history: list[Turn] = Field(default_factory=list, description="earlier turns, rendered by the chat template")


class SmokeSuite(Strict):
    max_new_tokens: int = Field(48, gt=0)
    prompts: list[SmokePrompt] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SmokeSuite:
        """Replies are matched to the base's by prompt: two identical prompts would be one row twice."""
        seen: set[tuple] = set()
        for p in self.prompts:
            key = (p.prompt, p.system, tuple(p.history))
            if key in seen:
                raise FieldProblem(f"prompt {p.prompt!r} appears twice", "remove the copy or change its system prompt")
            seen.add(key)
        return self


def load_suite(path) -> SmokeSuite:
    return load_yaml(path, "smoke suite", SmokeSuite)


def render(template: str, prompt: SmokePrompt, default_system: str) -> str:
    """A single-turn prompt as the project's `prompt_template` writes it."""
    return template.format(system=prompt.system if prompt.system is not None else default_system, prompt=prompt.prompt)


def _messages(prompt: SmokePrompt, template: str, default_system: str) -> list[dict[str, str]]:
    system = prompt.system if prompt.system is not None else default_system
    out = [{"role": "system", "content": system}] if "{system}" in template else []
    for turn in prompt.history:
        out += [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.assistant}]
    return out + [{"role": "user", "content": prompt.prompt}]


def _strip_bos(text: str, tokenizer) -> str:
    """Some chat templates write the BOS text themselves, which the tokenizer then adds as a token: the text
    without it, when the tokenizer adds one (SmolLM2's "BOS" is `<|im_start|>`, which it never adds)."""
    bos = tokenizer.bos_token or ""
    if not (bos and text.startswith(bos)):
        return text
    adds = tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
    return text[len(bos) :] if adds else text


def prompt_ids(template: str, prompt: SmokePrompt, default_system: str, tokenizer) -> list[int] | None:
    """The prompt's token ids; a multi-turn prompt goes through the tokenizer's own chat template (checked
    against `prompt_template` on one turn by `template_problem`). None when it has history but the
    tokenizer ships no chat template: such a prompt cannot be rendered faithfully, so it is not asked."""
    if prompt.history:
        if not getattr(tokenizer, "chat_template", None):
            return None
        messages = _messages(prompt, template, default_system)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = _strip_bos(text, tokenizer)
    else:
        text = render(template, prompt, default_system)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def template_problem(template: str, default_system: str, tokenizer) -> str | None:
    """None when `prompt_template` renders what the tokenizer's own chat template renders."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = SmokePrompt(prompt="Name a colour.")
    theirs = tokenizer.apply_chat_template(
        _messages(probe, template, default_system), tokenize=False, add_generation_prompt=True
    )
    ours = render(template, probe, default_system)
    if ours == _strip_bos(theirs, tokenizer):
        return None
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return (
        f"prompt_template disagrees with the tokenizer's chat template at character {at}: "
        f"ours {ours[max(0, at - 10) : at + 20]!r} vs theirs {theirs[max(0, at - 10) : at + 20]!r}"
    )


def reply_problems(reply: str, token_ids: list[int], template: str) -> list[str]:
    problems = []
    if not reply.strip():
        problems.append(EMPTY)
    leaked = sorted(set(MARKER.findall(reply)) & set(MARKER.findall(template)))
    if leaked:
        problems.append(f"{LEAK}: {', '.join(leaked)} in the reply")
    if len(token_ids) >= 16:
        grams = [tuple(token_ids[i : i + 4]) for i in range(len(token_ids) - 3)]
        long = [tuple(token_ids[i : i + 8]) for i in range(len(token_ids) - 7)]
        # Few distinct 4-grams (a short loop), or one 8-token phrase three times (a long loop).
        if len(set(grams)) / len(grams) < 0.35 or max(long.count(g) for g in set(long)) >= 3:
            problems.append(REPETITION)
    return problems


def kind_of(problem: str) -> str:
    """`template leak: <|user|> in the reply` -> `template leak`: what a base reply may share."""
    return problem.split(":", 1)[0]


def agreement(ours: Sequence[int], base: Sequence[int]) -> tuple[int, float]:
    """(tokens until the first divergence, share of positions holding the same token over the longer reply)."""
    first = next((i for i, (a, b) in enumerate(zip(ours, base)) if a != b), min(len(ours), len(base)))
    longest = max(len(ours), len(base))
    same = sum(a == b for a, b in zip(ours, base))
    return first, (same / longest if longest else 1.0)


def against_base(reply: Reply, base: Reply) -> Reply:
    """The variant's reply with the base's beside it: its problems the base does not share, and agreement."""
    shared = {kind_of(p) for p in base.problems}
    first, share = agreement(reply.ids, base.ids)
    return reply.model_copy(
        update={
            "base_reply": base.reply,
            "base_problems": base.problems,
            "new_problems": [p for p in reply.problems if kind_of(p) not in shared],
            "agree_tokens": first,
            "same_share": share,
        }
    )
