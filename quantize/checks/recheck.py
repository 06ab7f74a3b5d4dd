"""`verify --check`: the published figures measured again, on this machine, from the downloaded bytes.

The files are already known to be the published ones (their sha256s matched the manifest);
what is tested here is the claim the card makes about them. The checks need the same
unquantized model and eval set the figures were measured against, so the config must
resolve to the manifest's base-model hash and eval-set hash; otherwise the comparison would
be between two different questions, and it is refused in one line instead. A figure further
from the published one than the manifest's tolerance is a problem, like a changed byte.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..config import Project
from ..context import RunContext
from ..errors import VerifyError
from ..manifest import Manifest, Recheck, Remeasured
from .checker import Checker

log = logging.getLogger(__name__)


def _variant(project: Project, m: Manifest):
    """The config's variant for this manifest, built with the same parameters, or a one-line refusal."""
    found = next((v for v in project.variants if v.branch == m.variant.branch), None)
    if found is None:
        raise VerifyError(
            f"{project.path}: has no variant for branch {m.variant.branch}, so its figures cannot be re-measured",
            fix="pass the --config the family was built from",
        )
    if found.params() != m.variant.params:
        raise VerifyError(
            f"{project.path}: variant {found.name} has other parameters than {m.variant.branch} was built with",
            fix="pass the --config the family was built from",
        )
    return found


def _own_files(folder: Path, m: Manifest, dest: Path) -> Path:
    """A folder holding only the files `m` names, linked from the download: a shared `main` holds several
    variants' files side by side, and a format's loader takes the folder it is given as the variant's."""
    if dest.exists():
        shutil.rmtree(dest)
    for f in m.files:
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink((folder / f.path).resolve(), target)
    return dest


def recheck(project: Project, folder: Path, manifests: list[Manifest], work: Path) -> list[Recheck]:
    """Every manifest's checks run again on `folder` (the download); `work` holds what the checks cache."""
    checker = Checker(RunContext(project, work))
    base, evalset = checker.ctx.base.hash, checker.evalset().stats.hash
    results = []
    for m in manifests:
        variant = _variant(project, m)
        if m.base_model.hash != base:
            raise VerifyError(
                f"{project.path}: its base model hashes to {base}, {m.variant.branch} was measured against "
                f"{m.base_model.hash}",
                fix="point base_model at the model the family was quantized from",
            )
        if m.figures.eval.hash != evalset:
            raise VerifyError(
                f"{project.path}: its eval set {checker.project.config.evaluation} hashes to {evalset[:12]}..., "
                f"{m.variant.branch} was measured on {m.figures.eval.eval} ({m.figures.eval.hash[:12]}...)",
                fix="use the config and eval/ files the family was checked with",
            )
        log.info("re-measuring %s from the downloaded files", m.variant.name)
        got = checker.check(variant, _own_files(folder, m, work / "recheck" / m.variant.branch))
        t, f = m.tolerance, m.figures
        pairs = [
            ("ppl", f.ppl, got.ppl, t.ppl_rel * f.ppl),
            ("base_ppl", f.base_ppl, got.base_ppl, t.ppl_rel * f.base_ppl),
            ("mean_kld", f.mean_kld, got.mean_kld, t.mean_kld_rel * f.mean_kld),
            ("top1_agreement", f.top1_agreement, got.top1_agreement, t.top1_abs),
        ]
        figures = [
            Remeasured(figure=name, published=p, measured=g, allowed=a, within=abs(g - p) <= a)
            for name, p, g, a in pairs
        ]
        results.append(Recheck(variant=m.variant.name, figures=figures))
    return results


def problems(results: list[Recheck]) -> list[str]:
    return [
        f"{r.variant}: {x.figure} measured {x.measured:.6g}, published {x.published:.6g} "
        f"(differs by {abs(x.measured - x.published):.3g}, the manifest allows {x.allowed:.3g})"
        for r in results
        for x in r.figures
        if not x.within
    ]
