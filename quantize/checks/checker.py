"""`check`: perplexity, KL divergence, memory and smoke chat of a built variant, judged by gates.

The base model's perplexity and compact log-probabilities are computed once per (base
model, eval set) and cached; each variant is then scored on the same windows of the same
token ids, whatever its format. The verdict goes into the variant's report.json, where
`publish` reads it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import formats
from ..config import Variant
from ..context import RunContext
from ..devices import has_cuda
from ..errors import QuantizeError
from ..evalset import eval_set, find_eval
from ..hashing import sha256_json, short
from ..measure import Stages
from ..paths import cache_dir, compute_once
from ..records import CheckReport, Memory, Reply, Report, read_report
from ..scoring import Reference, Scores, reference, score
from ..streaming import LayerStream
from .gates import judge, load_gates
from .smoke import load_suite, render, reply_problems, template_problem

log = logging.getLogger(__name__)


class Checker:
    """Runs the checks of one run (`RunContext`); shares the eval set and base reference across variants."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.project = ctx.project
        root = self.project.root
        cfg = self.project.config
        self.eval_path = find_eval(root, cfg.evaluation)
        self.smoke = load_suite(find_eval(root, cfg.smoke))
        self.gates = load_gates(find_eval(root, cfg.gates))
        self._evalset = None
        self._base: tuple[Scores, Reference] | None = None

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

    def check(self, variant, folder: Path) -> CheckReport:
        import torch

        base_scores, ref = self.base_reference()
        es = self.evalset()
        stages = Stages()
        cuda = has_cuda()
        fmt = formats.of(variant)
        with stages.stage("check"):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            scorer = fmt.load(folder, variant, es.stats.n_ctx, self.ctx.base.config)
            load_cuda = torch.cuda.max_memory_allocated() if cuda and scorer.model is not None else None
            row = self.ctx.planner().row(variant)
            forward_cuda = (
                self._cuda_forward_peak(scorer.model, es.windows, row.seq_len) if load_cuda is not None else None
            )
            scores = score(es.windows, scorer.logits, ref, desc=f"score {variant.name}")
            replies = self._smoke(scorer)
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
        smoke_problems = [f"{r.prompt!r}: {p}" for r in replies for p in r.problems]
        peak = memory.peak_cuda_bytes if memory.peak_cuda_bytes is not None else memory.peak_rss_bytes
        ratio = scores.ppl / base_scores.ppl
        verdicts = judge(
            self.gates.get(variant.format),
            ratio,
            scores.mean_kld,
            scores.top1_agreement,
            None if peak is None else peak / 1e9,
            smoke_problems,
            problem,
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
        tokenizer = self.ctx.tokenizer()
        cfg = self.project.config
        replies = []
        for prompt in self.smoke.prompts:
            text = render(cfg.prompt_template, prompt, cfg.system_prompt)
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            new = scorer.greedy(
                ids,
                self.smoke.max_new_tokens,
                stop=tokenizer.eos_token_id,
                pad=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            reply = tokenizer.decode(new, skip_special_tokens=False)
            replies.append(
                Reply(prompt=prompt.prompt, reply=reply, problems=reply_problems(reply, new, cfg.prompt_template))
            )
        return replies


def run_check(checker: Checker, variant: Variant, report: Report | None = None) -> Report:
    """The check stage's entry point: check a built variant, record the result in its report.json, return it.

    Skipped when the report already holds checks on this eval set (unless the run forces)."""
    folder = checker.ctx.folder(variant)
    report = report or read_report(folder)
    if report is None:
        raise QuantizeError(
            f"{folder}: no report.json",
            fix=f"build the variant first: python -m quantize build --variant {variant.name}",
        )
    if report.checks is not None and report.checks.eval.hash == checker.evalset().stats.hash and not checker.ctx.force:
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
    for v in report.verdicts:
        value = f"{v.value:.4f}" if isinstance(v.value, float) else str(v.value)
        lines.append(f"  {'PASS' if v.passed else 'FAIL'}  {v.gate:14s} {value} (limit {v.limit})")
    return "\n".join(lines)
