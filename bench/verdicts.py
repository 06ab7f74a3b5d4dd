"""Issue #28: do the gates' verdicts still hang on one prompt, and does the chat KLD column rank like other chats?

Why: one greedy reply once decided what was published (a GGUF mix with half i1-Q4_K_M's KLD failed on
"Translate 'good morning' into Spanish."). This builds the example's GPTQ and GGUF variants of SmolLM2
(calibration seed 0), rebuilds two of them (gptq-4bit-32g, gguf-i1-q4_k_m) with calibration seed 1, and
checks every file on both texts of the recipe study (held-out Wikipedia, Lee news corpus), then prints:

  verdicts   per variant and condition (seed x text): the old rule (the three prompts of the old suite,
             each reply judged alone, no tolerance) and the new one (24 prompts against the base's own
             replies, eval/smollm2-gates.yaml's tolerance); a variant "flips" when its verdicts differ
             across its conditions
  ranking    chat KLD (eval/chat.yaml) against the held-back chat set (eval/chat-heldout.yaml: 24 other
             prompts), and plain-text KLD against both: Spearman rank correlations over the variants

Usage: python bench/verdicts.py [--work DIR] [--out DIR]   (about 25 minutes on 2 cores; writes
bench/results/verdicts.json). `--out` reuses a folder of seed-0 builds of the example.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml
from common import ROOT, WORK, bench_env, log, quantize_cli, read_reports, run, table, write_result
from recipes import news_text

EXAMPLE = ROOT / "examples" / "smollm2.yaml"
VARIANTS = [  # the example's GPTQ and GGUF variants (MLX and AWQ checks take 15-30 minutes each here)
    "gptq-8bit-32g",
    "gptq-4bit-32g",
    "gptq-4bit-64g",
    "gguf-q8_0",
    "gguf-i1-q6_k",
    "gguf-i1-q5_k_m",
    "gguf-i1-q4_k_m",
    "gguf-q4_k_m",
]
RESEEDED = ["gptq-4bit-32g", "gguf-i1-q4_k_m"]
OLD_PROMPTS = (  # the three prompts of the suite before issue #28, all in today's suite
    "What is the capital of France? Answer in one sentence.",
    "Give me three tips for staying focused while studying.",
    "Translate 'good morning' into Spanish.",
)
QUALITY_GATES = ("max_ppl_ratio", "max_mean_kld", "min_top1", "chat_template")


def project(folder: Path, seed: int, text: str, chat: str) -> Path:
    """The example's config in `folder`, with calibration seed `seed`, eval text `text`, chat eval `chat`."""
    config = yaml.safe_load(EXAMPLE.read_text())
    (folder / "calibration").mkdir(parents=True, exist_ok=True)
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_load((ROOT / "calibration" / "wiki-summaries.yaml").read_text())
    (folder / "calibration" / f"wiki-seed{seed}.yaml").write_text(yaml.safe_dump({**recipe, "seed": seed}))
    news = {"source": {"files": [str(news_text(folder))]}, "min_chars": 200, "n_ctx": 512, "max_windows": 16}
    (folder / "eval" / "news.yaml").write_text(yaml.safe_dump(news))
    # seed 0 keeps the example's recipe name, so the example's own builds (and README outputs) are reused
    config["calibration"] = "wiki-summaries" if seed == 0 else f"wiki-seed{seed}"
    config["evaluation"] = {"wiki": "wiki-summaries-heldout", "news": "news"}[text]
    config["chat_evaluation"] = chat
    path = folder / f"variants-seed{seed}-{text}-{chat}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def old_verdict(checks: dict) -> bool:
    """The rule before issue #28: quality gates, and each of the old three replies judged alone."""
    gates = {v["gate"]: v["passed"] for v in checks["verdicts"]}
    replies = {r["prompt"]: r for r in checks["replies"]}
    return all(gates[g] for g in QUALITY_GATES if g in gates) and not any(replies[p]["problems"] for p in OLD_PROMPTS)


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(xs: list[float]) -> list[int]:
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        out = [0] * len(xs)
        for rank, i in enumerate(order):
            out[i] = rank
        return out

    ra, rb, n = ranks(a), ranks(b), len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def checked(out: Path, config: Path, names: list[str], env: dict, logs: Path, tag: str) -> dict[str, dict]:
    """Check `names` in a hard-linked copy of `out` (each condition keeps its own report.json)."""
    copy = out.parent / f"{out.name}-{tag}"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(out, copy, copy_function=lambda s, d: Path(d).hardlink_to(s))
    args = [a for n in names for a in ("--variant", n)]
    run(
        quantize_cli("check", "--config", str(config), "--out", str(copy), "--force", *args),
        env,
        log_file=logs / f"check-{tag}.log",
        check=False,
    )  # exit 1 when a gate fails: that is a result
    reports = read_reports(copy)
    return {n: reports[n]["checks"] for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=WORK / "verdicts")
    ap.add_argument("--out", type=Path, default=None, help="seed-0 builds of the example to reuse")
    args = ap.parse_args()
    work, env = args.work, bench_env()
    logs = work / "logs"
    outs = {0: args.out or work / "out-seed0", 1: work / "out-seed1"}
    conditions: dict[str, dict[str, dict]] = {}
    for seed, names in ((0, VARIANTS), (1, RESEEDED)):
        build_cfg = project(work, seed, "wiki", "chat")
        args_v = [a for n in names for a in ("--variant", n)]
        log(f"seed {seed}: building {len(names)} variants into {outs[seed]}")
        run(
            quantize_cli("build", "--config", str(build_cfg), "--out", str(outs[seed]), "--no-check", *args_v),
            env,
            log_file=logs / f"build-seed{seed}.log",
            check=False,  # exit 1 when a skipped build's earlier checks failed: the checks below redo them
        )
        missing = sorted(set(names) - set(read_reports(outs[seed])))
        if missing:
            raise SystemExit(f"not built: {missing}; see {logs / f'build-seed{seed}.log'}")
        for text in ("wiki", "news"):
            tag = f"seed{seed}-{text}"
            log(f"checking {tag}")
            conditions[tag] = checked(outs[seed], project(work, seed, text, "chat"), names, env, logs, tag)
    log("checking the held-back chat set")
    heldout = checked(outs[0], project(work, 0, "wiki", "chat-heldout"), VARIANTS, env, logs, "seed0-heldout")

    rows, flips = [], {"old": 0, "new": 0}
    for name in VARIANTS:
        mine = {tag: c[name] for tag, c in conditions.items() if name in c}
        old = {tag: old_verdict(c) for tag, c in mine.items()}
        new = {tag: c["passed"] for tag, c in mine.items()}
        flips["old"] += len(set(old.values())) > 1
        flips["new"] += len(set(new.values())) > 1
        for tag, c in mine.items():
            sm = c["smoke"]
            rows.append(
                {
                    "variant": name,
                    "condition": tag,
                    "kld": c["mean_kld"],
                    "chat_kld": c["chat"]["mean_kld"],
                    "smoke": f"{sm['passed']}/{sm['prompts']} (base {sm['base_passed']})",
                    "regress": sm["regressions"],
                    "old": "pass" if old[tag] else "FAIL",
                    "new": "pass" if new[tag] else "FAIL",
                }
            )
    wiki = conditions["seed0-wiki"]
    kld = [wiki[n]["mean_kld"] for n in VARIANTS]
    chat = [wiki[n]["chat"]["mean_kld"] for n in VARIANTS]
    held = [heldout[n]["chat"]["mean_kld"] for n in VARIANTS]
    ranking = {
        "chat_vs_heldout_chat": spearman(chat, held),
        "text_vs_heldout_chat": spearman(kld, held),
        "text_vs_chat": spearman(kld, chat),
        "heldout_chat_kld": dict(zip(VARIANTS, held)),
    }
    cols = [
        ("variant", "VARIANT", ""),
        ("condition", "SEED-TEXT", ""),
        ("kld", "KLD", ".4f"),
        ("chat_kld", "CHAT KLD", ".4f"),
        ("smoke", "SMOKE", ""),
        ("regress", "REGRESS", "d"),
        ("old", "OLD RULE", ""),
        ("new", "NEW RULE", ""),
    ]
    print(table(rows, cols))
    print(
        f"\nvariants whose verdict flips across seeds and texts: old rule {flips['old']}, new rule {flips['new']}"
        f" (of {len(VARIANTS)})"
    )
    print(
        f"Spearman over {len(VARIANTS)} variants: chat KLD vs held-back chat KLD "
        f"{ranking['chat_vs_heldout_chat']:.3f}, plain-text KLD vs held-back chat {ranking['text_vs_heldout_chat']:.3f}"
    )
    write_result("verdicts", {"rows": rows, "flips": flips, "ranking": ranking})


if __name__ == "__main__":
    main()
