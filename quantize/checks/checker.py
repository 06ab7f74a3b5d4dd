"""`check`: perplexity, KL divergence, memory and smoke chat of a built variant, judged by gates.

The base model's perplexity and compact log-probabilities are computed once per (base
model, eval set) and cached; each variant is then scored on the same windows of the same
token ids, whatever its format. So are the base's greedy replies to the smoke suite, which
every variant's replies are judged against, and its log-probabilities on the chat eval's
assistant turns. The verdict goes into the variant's report.json, where `publish` reads it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import formats
from ..config import Variant
from ..context import RunContext
from ..devices import has_cuda
from ..errors import NotBuilt
from ..evalset import eval_set, find_eval, load_chat_eval
from ..hashing import sha256_json, short
from ..measure import Stages
from ..outputs import built_report
from ..paths import cache_dir, compute_once
from ..records import ChatScores, CheckReport, Memory, Reply, Report, SmokeSummary
from ..scoring import Reference, Scores, reference, score
from ..streaming import LayerStream
from .chat import ChatSet, ask, base_answers, chat_set, to_reply
from .gates import judge, load_gates
from .smoke import SmokeSuite, against_base, load_suite, prompt_ids, template_problem

log = logging.getLogger(__name__)


class Checker:
    """Runs the checks of one run (`RunContext`); shares the eval set and base reference across variants."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.project = ctx.project
        root = self.project.root
        cfg = self.project.config
        self.eval_path = find_eval(root, cfg.evaluation)
        self.suites: dict[str, SmokeSuite] = {cfg.smoke: load_suite(find_eval(root, cfg.smoke))}
        self.smoke = self.suites[cfg.smoke]
        self.chat = load_chat_eval(find_eval(root, cfg.chat_evaluation)) if cfg.chat_evaluation else None
        self.chat_suite = (self.chat.suite or cfg.smoke) if self.chat else None
        if self.chat_suite is not None and self.chat_suite not in self.suites:
            self.suites[self.chat_suite] = load_suite(find_eval(root, self.chat_suite))
        self.gates = load_gates(find_eval(root, cfg.gates))
        self._evalset = None
        self._base: tuple[Scores, Reference] | None = None
        self._asked: dict[str, list[list[int] | None]] = {}
        self._answers: dict[str, list[list[int] | None]] = {}
        self._chat: tuple[ChatSet, Reference] | None = None

    def evalset(self):
        if self._evalset is None:
            self._evalset = eval_set(self.eval_path, self.ctx.tokenizer(), self.ctx.base.tokenizer_hash)
        return self._evalset

    def base_reference(self) -> tuple[Scores, Reference]:
        if self._base is None:
            es = self.evalset()
            key = short(sha256_json({"base": self.ctx.base.hash, "eval": es.stats.hash}))
            ref_file = cache_dir() / "reference" / f"{key}.npz"

            def make(tmp: Path) -> None:
                log.info("base log-probs: scoring the base model on %d windows of %d", *es.windows.shape)
                # layer by layer (float32 on a CPU, half precision on a GPU): a 7B model never whole in memory
                reference(es.windows, LayerStream(self.ctx.base.path).logits_fn(es.windows)).save(tmp)

            if not compute_once(ref_file, make):
                log.info("base log-probs: cache hit %s", key)
            ref = Reference.load(ref_file)
            self._base = (ref.scores(), ref)
        return self._base

    def asked(self, suite: str) -> list[list[int] | None]:
        """Each prompt of `suite` as token ids through the template (None: cannot be rendered here)."""
        if suite not in self._asked:
            cfg, tokenizer = self.project.config, self.ctx.tokenizer()
            self._asked[suite] = [
                prompt_ids(cfg.prompt_template, p, cfg.system_prompt, tokenizer) for p in self.suites[suite].prompts
            ]
        return self._asked[suite]

    def base_replies(self, suite: str) -> list[list[int] | None]:
        """The base's greedy replies to `suite`, long enough for the smoke check and the chat eval both."""
        if suite not in self._answers:
            length = self.suites[suite].max_new_tokens
            if self.chat is not None and suite == self.chat_suite:
                length = max(length, self.chat.max_new_tokens)
            self._answers[suite] = base_answers(self.ctx.base, self.asked(suite), length, self.ctx.tokenizer())
        return self._answers[suite]

    def chat_reference(self) -> tuple[ChatSet, Reference] | None:
        """The chat eval's conversations and the base's log-probs on their assistant tokens (None: no chat eval)."""
        if self.chat is None or self.chat_suite is None:
            return None
        if self._chat is None:
            tokenizer = self.ctx.tokenizer()
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            name = self.project.config.chat_evaluation or ""
            found = chat_set(
                name,
                self.chat_suite,
                self.asked(self.chat_suite),
                self.base_replies(self.chat_suite),
                self.chat.max_new_tokens,
                pad,
            )
            if found is None:
                return None
            key = short(sha256_json({"base": self.ctx.base.hash, "chat": found.stats.hash}))
            ref_file = cache_dir() / "reference" / f"chat-{key}.npz"

            def make(tmp: Path) -> None:
                log.info("base chat log-probs: %d conversations, %d tokens", *found.windows.shape)
                logits = LayerStream(self.ctx.base.path).logits_fn(found.windows)
                reference(found.windows, logits, positions=found.positions).save(tmp)

            if not compute_once(ref_file, make):
                log.info("base chat log-probs: cache hit %s", key)
            self._chat = (found, Reference.load(ref_file))
        return self._chat

    def check(self, variant, folder: Path) -> CheckReport:
        import torch

        base_scores, ref = self.base_reference()
        es = self.evalset()
        chat = self.chat_reference()
        base_replies = self._base_smoke()
        stages = Stages()
        cuda = has_cuda()
        fmt = formats.of(variant)
        with stages.stage("check"):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            n_ctx = max(es.stats.n_ctx, chat[0].stats.n_ctx if chat else 0)
            scorer = fmt.load(folder, variant, n_ctx, self.ctx.base.config)
            load_cuda = torch.cuda.max_memory_allocated() if cuda and scorer.model is not None else None
            row = self.ctx.planner().row(variant)
            forward_cuda = (
                self._cuda_forward_peak(scorer.model, es.windows, row.seq_len) if load_cuda is not None else None
            )
            scores = score(es.windows, scorer.logits, ref, desc=f"score {variant.name}")
            chat_scores = self._chat_scores(scorer, chat, variant.name)
            replies = [against_base(r, b) for r, b in zip(self._smoke(scorer), base_replies)]
        # score() against a reference always fills the KLD fields
        assert scores.mean_kld is not None and scores.p99_kld is not None and scores.top1_agreement is not None
        measured = stages.measures["check"]
        memory = Memory(
            peak_rss_bytes=measured.peak_rss_bytes,
            peak_cuda_bytes=measured.peak_cuda_bytes,
            load_cuda_bytes=load_cuda,
            forward_cuda_bytes=forward_cuda,
            predicted_load_bytes=row.load_bytes,
            predicted_run_bytes=row.run_bytes,
            max_ram_required_bytes=fmt.max_ram(row.load_bytes),
        )
        problem = template_problem(
            self.project.config.prompt_template, self.project.config.system_prompt, self.ctx.tokenizer()
        )
        peak = memory.peak_cuda_bytes if memory.peak_cuda_bytes is not None else memory.peak_rss_bytes
        ratio = scores.ppl / base_scores.ppl
        verdicts = judge(
            self.gates.get(variant.format),
            ratio,
            scores.mean_kld,
            scores.top1_agreement,
            None if peak is None else peak / 1e9,
            replies,
            problem,
            chat_kld=chat_scores.mean_kld if chat_scores else None,
        )
        return CheckReport(
            eval=es.stats,
            base_ppl=base_scores.ppl,
            ppl=scores.ppl,
            ppl_delta=scores.ppl - base_scores.ppl,
            ppl_ratio=ratio,
            mean_kld=scores.mean_kld,
            p99_kld=scores.p99_kld,
            top1_agreement=scores.top1_agreement,
            memory=memory,
            template_problem=problem,
            replies=replies,
            smoke=self._summary(replies, base_replies),
            chat=chat_scores,
            verdicts=verdicts,
            passed=all(v.passed for v in verdicts),
        )

    @staticmethod
    def _cuda_forward_peak(model, windows, seq_len: int) -> int:
        """Peak allocated CUDA memory of one batch-1 forward at the variant's sequence length, after loading."""
        import torch

        torch.cuda.reset_peak_memory_stats()
        ids = torch.from_numpy(np.resize(windows.ravel(), seq_len)).unsqueeze(0).to(model.device)
        with torch.no_grad():
            model(ids)
        return torch.cuda.max_memory_allocated()

    def _smoke(self, scorer) -> list[Reply]:
        """Greedy replies to the suite's prompts, from the same token ids for every format."""
        asked = self.asked(self.project.config.smoke)
        return self._replies(ask(scorer, asked, self.smoke.max_new_tokens, self.ctx.tokenizer(), desc="smoke chat"))

    def _base_smoke(self) -> list[Reply]:
        return self._replies(self.base_replies(self.project.config.smoke))

    def _replies(self, raw: list[list[int] | None]) -> list[Reply]:
        template, tokenizer, n = self.project.config.prompt_template, self.ctx.tokenizer(), self.smoke.max_new_tokens
        return [to_reply(p, r, n, tokenizer, template) for p, r in zip(self.smoke.prompts, raw)]

    def _summary(self, replies: list[Reply], base: list[Reply]) -> SmokeSummary:
        pairs = [(r, b) for r, b in zip(replies, base) if r.skipped is None]
        return SmokeSummary(
            suite=self.project.config.smoke,
            prompts=len(pairs),
            passed=sum(not r.problems for r, _ in pairs),
            base_passed=sum(not b.problems for _, b in pairs),
            regressions=sum(bool(r.new_problems) for r, _ in pairs),
            mean_agree_tokens=float(np.mean([r.agree_tokens or 0 for r, _ in pairs])) if pairs else 0.0,
            mean_same_share=float(np.mean([r.same_share or 0.0 for r, _ in pairs])) if pairs else 0.0,
        )

    def _chat_scores(self, scorer, chat: tuple[ChatSet, Reference] | None, name: str) -> ChatScores | None:
        if chat is None:
            return None
        found, ref = chat
        scores = score(found.windows, scorer.logits, ref, desc=f"chat {name}", positions=found.positions)
        assert scores.mean_kld is not None and scores.p99_kld is not None and scores.top1_agreement is not None
        base_ppl = ref.scores().ppl
        return ChatScores(
            eval=found.stats,
            base_ppl=base_ppl,
            ppl=scores.ppl,
            ppl_ratio=scores.ppl / base_ppl,
            mean_kld=scores.mean_kld,
            p99_kld=scores.p99_kld,
            top1_agreement=scores.top1_agreement,
        )


def run_check(checker: Checker, variant: Variant, report: Report | None = None) -> Report:
    """The check stage's entry point: check a built variant, record the result in its report.json, return it.

    Skipped when the report already holds checks on this eval set (unless the run forces)."""
    folder = checker.ctx.folder(variant)
    report = report or built_report(checker.ctx.out_root, variant)
    if report is None:
        raise NotBuilt(
            f"{folder}: no report.json",
            fix=f"build the variant first: python -m quantize build --variant {variant.name}",
        )
    done = report.checks
    if (
        done is not None
        and done.eval.hash == checker.evalset().stats.hash
        and done.smoke is not None  # judged against the base's replies, not an older report's replies alone
        and (done.chat.eval.eval if done.chat else None)
        == (checker.project.config.chat_evaluation if checker.chat else None)
        and not checker.ctx.force
    ):
        log.info("%s: already checked on this eval set (%s)", variant.name, report.status)
        return report
    result = checker.check(variant, folder)
    report = report.model_copy(update={"checks": result, "status": "passed" if result.passed else "failed"})
    report.write(folder)
    return report


def format_verdicts(name: str, report: CheckReport) -> str:
    lines = [
        f"{name}: ppl {report.ppl:.3f} (base {report.base_ppl:.3f}, x{report.ppl_ratio:.3f}), "
        f"KLD {report.mean_kld:.4f} (p99 {report.p99_kld:.4f}), top-1 {100 * report.top1_agreement:.1f}% "
        f"on {report.eval.scored_tokens} tokens of {report.eval.eval}"
    ]
    if report.chat is not None:
        ch = report.chat
        lines.append(
            f"  chat: ppl {ch.ppl:.3f} (base {ch.base_ppl:.3f}), KLD {ch.mean_kld:.4f} (p99 {ch.p99_kld:.4f}), "
            f"top-1 {100 * ch.top1_agreement:.1f}% on {ch.eval.scored_tokens} assistant tokens of "
            f"{ch.eval.conversations} conversations ({ch.eval.eval})"
        )
    if report.smoke is not None:
        sm = report.smoke
        lines.append(
            f"  smoke: {sm.passed} of {sm.prompts} replies sound (base {sm.base_passed}), {sm.regressions} regress; "
            f"the base's own tokens for {sm.mean_agree_tokens:.1f} tokens on average "
            f"({100 * sm.mean_same_share:.0f}% of positions)"
        )
    for v in report.verdicts:
        value = f"{v.value:.4f}" if isinstance(v.value, float) else str(v.value)
        lines.append(f"  {'PASS' if v.passed else 'FAIL'}  {v.gate:14s} {value} (limit {v.limit})")
    return "\n".join(lines)
