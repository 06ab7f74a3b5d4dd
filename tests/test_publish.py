"""Publishing for real: the tiny model's variants pushed to a local hub and downloaded back by revision.

Two servers, both on 127.0.0.1 and stopped by the tests: `localhub` (tests/localhub.py)
speaks the write endpoints HfApi uses; olah serves what the git transport pushed into a
mirror folder. Downloads go through huggingface_hub and the `hf` command, as users do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_GATES, cards_for, run_cli, write_config
from faults import BRANCHES, DEFAULT, REPO_GGUF, REPO_GPTQ, TOKEN, Family
from localhub import serve


@pytest.fixture(scope="module")
def built(family, tiny_model):
    """The four variants built, checked and carded (conftest's `family`, shared with the fault trials)."""
    return {"work": family.config.parent, "config": family.config, "out": family.out, "base": tiny_model}


def publish(built, *args: str, token: str = TOKEN, **env) -> subprocess.CompletedProcess:
    cards_for(built["config"], built["out"], *args)
    os.environ.update({"HF_TOKEN": token, "QUANTIZE_HUB_BACKOFF": "0.05", **env})
    try:
        return run_cli("publish", "--config", str(built["config"]), "--out", str(built["out"]), *args)
    finally:
        for key in ("HF_TOKEN", "QUANTIZE_HUB_BACKOFF", *env):
            os.environ.pop(key, None)


def expected_files(built, branch: str) -> dict[str, bytes]:
    """What a branch must hold: the report's files, and the repo's card and plot."""
    return Family(built["config"], built["out"]).branch_files(branch)


def published_commits(built) -> dict[tuple[str, str, str], str | None]:
    """(variant branch, repo, target branch) -> the commit out/published/ records for it."""
    return {
        (p.stem, t["repo"], t["branch"]): t["commit"]
        for p in (built["out"] / "published").glob("*.json")
        for t in json.loads(p.read_text())["targets"]
    }


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error:` line a failed command prints, last on stderr."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and errors == [proc.stderr.splitlines()[-1]], proc.stderr
    return errors[0]


def downloaded(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.parts and p.name != ".gitattributes"
    }


def test_http_publish_downloads_back_byte_for_byte(built, tmp_path):
    from huggingface_hub import snapshot_download

    with serve(tmp_path / "hub", TOKEN) as hub:
        hub.fail_next.update({"create_branch": 1, "preupload": 2})  # transient 503s: retried, not fatal
        proc = publish(built, "--all", "--endpoint", hub.url)
        assert proc.returncode == 0, proc.stderr
        assert "retrying" in proc.stderr and TOKEN not in proc.stdout + proc.stderr
        routes = [name for name, _ in hub.calls]
        for route in ("create_repo", "create_branch", "tree", "preupload", "lfs_batch", "lfs_upload", "commit"):
            assert route in routes, route
        assert routes.index("create_repo") < routes.index("create_branch") < routes.index("commit")

        for branch, repo in BRANCHES.items():
            got = downloaded(
                Path(snapshot_download(repo, revision=branch, endpoint=hub.url, cache_dir=tmp_path / "dl"))
            )
            assert got == expected_files(built, branch), branch
        # main of the GPTQ repo is the default variant; main of the GGUF repo holds every GGUF file.
        main = downloaded(
            Path(snapshot_download(REPO_GPTQ, revision="main", endpoint=hub.url, cache_dir=tmp_path / "dl"))
        )
        assert main == expected_files(built, "gptq-4bit-32g-actorder_True")
        gguf_main = downloaded(
            Path(snapshot_download(REPO_GGUF, revision="main", endpoint=hub.url, cache_dir=tmp_path / "dl"))
        )
        assert {p for p in gguf_main if p.endswith(".gguf")} == {
            "tiny-mistral.Q8_0.gguf",
            "tiny-mistral.i1-Q4_K_M.gguf",
            "tiny-mistral.imatrix.gguf",  # the i1 file's importance matrix, as llama-quantize --imatrix reads it
        }
        card = gguf_main["README.md"].decode()
        assert "tiny-mistral.Q8_0.gguf" in card and "tiny-mistral.i1-Q4_K_M.gguf" in card

        record = json.loads((built["out"] / "published" / "gguf-q8_0.json").read_text())
        assert [t["branch"] for t in record["targets"]] == ["gguf-q8_0", "main"]
        assert TOKEN not in json.dumps(record)

        # Again, unchanged: nothing is uploaded, no commit is made, and the records keep the commits made before.
        commits = published_commits(built)
        assert all(commits.values()), commits
        calls = len(hub.calls)
        proc = publish(built, "--all", "--endpoint", hub.url)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("up to date, nothing uploaded") == 7
        assert not {"commit", "lfs_upload", "lfs_batch"} & {name for name, _ in hub.calls[calls:]}
        assert published_commits(built) == commits

        # A file removed from the variant's branch by someone else is put back, and only it.
        from huggingface_hub import HfApi

        HfApi(endpoint=hub.url, token=TOKEN).delete_file(
            "config.json", REPO_GPTQ, revision="gptq-8bit-32g-actorder_True"
        )
        proc = publish(built, "--variant", "gptq-8bit-32g", "--endpoint", hub.url)
        assert "gptq-8bit-32g-actorder_True: uploaded 1 file(s)" in proc.stdout, proc.stdout + proc.stderr


def verify(repo: str, revision: str, endpoint: str, out: Path) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`python -m quantize verify` over HTTP; the record it wrote this time (None when it wrote none)."""
    record = out / f"{repo.replace('/', '__')}__{revision}.verify.json"
    record.unlink(missing_ok=True)
    proc = run_cli("verify", repo, "--revision", revision, "--endpoint", endpoint, "--out", str(out))
    return proc, (json.loads(record.read_text()) if record.is_file() else None)


def test_every_branch_carries_a_manifest_and_verify_holds_a_download_to_it(built, tmp_path):
    """quantize.json names every file with its sha256, holds no local path, and carries the report's figures;
    `verify` passes on each untouched branch (the GGUF main: one manifest per variant) and names the file
    when a byte changed, a file was added, or a manifest lies on another branch; a branch quantize did not
    publish, and one that does not exist, are one line each."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = built["out"] / DEFAULT
    report = json.loads((folder / "report.json").read_text())
    text = (folder / "quantize.json").read_text()
    manifest = json.loads(text)
    for local in (str(built["work"]), str(built["base"]), str(Path.home()), "/tmp/"):
        assert local not in text, local
    assert manifest["files"] == sorted(report["files"], key=lambda f: f["path"])
    assert manifest["variant"]["branch"] == DEFAULT and manifest["variant"]["params"] == report["variant"]["params"]
    assert manifest["base_model"]["hash"] == report["inputs"]["base_model"]["hash"]
    assert manifest["calibration"]["hash"] == report["inputs"]["calibration"]["hash"]
    assert manifest["figures"]["eval"]["hash"] == report["checks"]["eval"]["hash"]
    for key in ("ppl", "base_ppl", "mean_kld", "p99_kld", "top1_agreement"):
        assert manifest["figures"][key] == report["checks"][key], key
    assert manifest["engines"]["gptqmodel"] == report["versions"]["gptqmodel"]
    assert manifest["inputs_hash"] == report["inputs_hash"]
    card = (built["out"] / "cards" / REPO_GPTQ.replace("/", "__") / "README.md").read_text()
    assert f"{manifest['figures']['mean_kld']:.4f}" in card  # the card's figure is the manifest's

    v = tmp_path / "verified"
    with serve(tmp_path / "hub", TOKEN) as hub:
        assert publish(built, "--all", "--endpoint", hub.url).returncode == 0
        heads = [(repo, branch) for branch, repo in BRANCHES.items()] + [(REPO_GPTQ, "main"), (REPO_GGUF, "main")]
        for repo, branch in heads:
            proc, record = verify(repo, branch, hub.url, v)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert record and record["passed"] and record["problems"] == [], record
            shared = repo == REPO_GGUF and branch == "main"
            assert [m["path"] for m in record["manifests"]] == (
                ["quantize/gguf-i1-q4_k_m.json", "quantize/gguf-q8_0.json"] if shared else ["quantize.json"]
            ), record
        api = HfApi(endpoint=hub.url, token=TOKEN)

        # --check: the figures measured again from the download agree with the published ones (the GGUF main: two
        # variants); a manifest whose figure was inflated is caught (the files it names are still intact).
        args = ("--endpoint", hub.url, "--out", str(v), "--check", "--config", str(built["config"]))
        proc = run_cli("verify", REPO_GGUF, "--revision", "main", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        record = json.loads((v / f"{REPO_GGUF.replace('/', '__')}__main.verify.json").read_text())
        assert [r["variant"] for r in record["rechecked"]] == ["gguf-i1-q4_k_m", "gguf-q8_0"], record
        assert all(x["within"] for r in record["rechecked"] for x in r["figures"]), record
        inflated = json.loads((built["out"] / "gguf-q8_0" / "quantize.json").read_text())
        inflated["figures"]["mean_kld"] *= 1.5
        api.upload_file(
            path_or_fileobj=json.dumps(inflated).encode(),
            path_in_repo="quantize.json",
            repo_id=REPO_GGUF,
            revision="gguf-q8_0",
        )
        proc = run_cli("verify", REPO_GGUF, "--revision", "gguf-q8_0", *args)
        assert "error: tester/tiny-mistral-GGUF@gguf-q8_0: gguf-q8_0: mean_kld measured " in error_line(proc)
        proc = run_cli("verify", REPO_GGUF, "--revision", "gguf-q8_0", "--endpoint", hub.url, "--out", str(v))
        assert proc.returncode == 0, proc.stderr  # without --check, only the files are held to it

        # One changed byte, one stray file: each named, exit 1, the first on the error line.
        config = (built["out"] / "gptq-8bit-32g-actorder_True" / "config.json").read_bytes()
        api.create_commit(
            REPO_GPTQ,
            [
                CommitOperationAdd("config.json", config.replace(b"{", b"{ ", 1)),
                CommitOperationAdd("notes.txt", b"not ours"),
            ],
            commit_message="someone else",
            revision="gptq-8bit-32g-actorder_True",
        )
        proc, record = verify(REPO_GPTQ, "gptq-8bit-32g-actorder_True", hub.url, v)
        assert error_line(proc).startswith(f"error: {REPO_GPTQ}@gptq-8bit-32g-actorder_True: config.json has ")
        assert record and not record["passed"]
        assert record["problems"] == [
            f"config.json has {len(config) + 1} bytes, quantize.json says {len(config)}",
            "notes.txt is on the branch but no manifest names it",
        ], record

        # A manifest copied onto another branch says whose it is.
        q8 = (built["out"] / "gguf-q8_0" / "quantize.json").read_bytes()
        api.upload_file(path_or_fileobj=q8, path_in_repo="quantize.json", repo_id=REPO_GGUF, revision="main")
        proc, record = verify(REPO_GGUF, "main", hub.url, v)
        assert "quantize.json describes gguf-q8_0, not main" in error_line(proc), proc.stderr

        # Not published by quantize; no such branch: one line, and no record.
        api.create_repo("tester/plain")
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="hello.txt", repo_id="tester/plain")
        proc, record = verify("tester/plain", "main", hub.url, v)
        assert "tester/plain@main: has no quantize.json" in error_line(proc) and record is None
        proc, _ = verify(REPO_GPTQ, "nope", hub.url, v)
        assert f"{REPO_GPTQ} has no branch 'nope'" in error_line(proc)


def test_a_wrong_token_gets_the_login_hint_and_leaks_nothing(built, tmp_path):
    wrong = "hf_wrong_token_that_must_not_leak_71c3"
    with serve(tmp_path / "hub", TOKEN) as hub:
        proc = publish(built, "--variant", "gguf-q8_0", "--endpoint", hub.url, token=wrong)
        assert proc.returncode == 1
        assert "authentication failed (HTTP 401)" in proc.stderr and "hf auth login" in proc.stderr
        assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
            proc.stderr.splitlines()[-1]
        ]
        assert wrong not in proc.stdout + proc.stderr
        assert all(wrong not in p.read_text() for p in built["out"].rglob("*.json"))
        assert "commit" not in {name for name, _ in hub.calls}


def test_a_variant_that_failed_its_gates_is_refused(built, tmp_path):
    strict = {fmt: {**gate, "max_mean_kld": 1e-6} for fmt, gate in TINY_GATES.items()}
    config = write_config(tmp_path, built["base"], [{"format": "gguf", "quant_type": "Q4_0"}], gates=strict)
    out = tmp_path / "out"
    assert run_cli("build", "--config", str(config), "--out", str(out), "--all").returncode == 1
    unchecked = write_config(tmp_path / "b", built["base"], [{"format": "gguf", "quant_type": "Q5_0"}])
    run_cli("build", "--config", str(unchecked), "--out", str(out), "--all", "--no-check", check=True)
    with serve(tmp_path / "hub", TOKEN) as hub:
        env = {**os.environ, "HF_TOKEN": TOKEN}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "quantize",
                "publish",
                "--config",
                str(config),
                "--out",
                str(out),
                "--all",
                "--endpoint",
                hub.url,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == 1 and "gguf-q4_0: failed its gates (max_mean_kld)" in proc.stderr
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "quantize",
                "publish",
                "--config",
                str(unchecked),
                "--out",
                str(out),
                "--all",
                "--endpoint",
                hub.url,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == 1 and "built but not checked" in proc.stderr
        both = write_config(
            tmp_path / "c",
            built["base"],
            [{"format": "gguf", "quant_type": "Q4_0"}, {"format": "gguf", "quant_type": "Q5_0"}],
            gates=strict,
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "quantize",
                "publish",
                "--config",
                str(both),
                "--out",
                str(out),
                "--all",
                "--only-passed",
                "--endpoint",
                hub.url,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == 1 and "nothing to publish" in proc.stderr
        assert (
            "skipped gguf-q4_0: failed its gates" in proc.stderr and "skipped gguf-q5_0: built but not" in proc.stderr
        )
        assert hub.calls == []  # refused before anything was sent


def test_a_file_changed_after_its_check_is_refused(built, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built["out"] / "gguf-q8_0", out / "gguf-q8_0")
    with open(out / "gguf-q8_0" / "tiny-mistral.Q8_0.gguf", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    proc = run_cli(
        "publish",
        "--config",
        str(built["config"]),
        "--out",
        str(out),
        "--variant",
        "gguf-q8_0",
        "--git",
        str(tmp_path / "mirror"),
    )
    assert proc.returncode == 1 and "differs from report.json since it was checked" in proc.stderr
    assert not (tmp_path / "mirror").exists()


def test_git_publish_to_a_mirror_served_by_olah(built, tmp_path):
    from quantize.hub.mirror import running

    mirror = tmp_path / "mirror"
    proc = publish(built, "--all", "--git", str(mirror))
    assert proc.returncode == 0, proc.stderr
    assert (mirror / "models" / REPO_GPTQ / "HEAD").is_file()
    again = publish(built, "--all", "--git", str(mirror))
    assert again.stdout.count("up to date, nothing uploaded") == 7, again.stdout + again.stderr
    verified = str(tmp_path / "verified")
    for repo, branch in ((REPO_GPTQ, "main"), (REPO_GGUF, "main"), (REPO_GGUF, "gguf-q8_0")):  # cloned by git
        proc = run_cli("verify", repo, "--revision", branch, "--git", str(mirror), "--out", verified)
        assert proc.returncode == 0 and proc.stdout.rstrip().endswith(".verify.json"), proc.stdout + proc.stderr
        assert f"{repo}@{branch}: " in proc.stdout and ", verified; wrote " in proc.stdout, proc.stdout
    proc = run_cli("verify", REPO_GGUF, "--revision", "nope", "--git", str(mirror), "--out", verified)
    assert "git clone --branch nope file://" in error_line(proc), proc.stderr

    with running(mirror) as url:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
        env.pop("HF_TOKEN", None)
        hf = Path(sys.executable).with_name("hf")
        for branch in ("gptq-4bit-32g-actorder_True", "gguf-i1-q4_k_m"):
            dest = tmp_path / "dl" / branch
            proc = subprocess.run(
                [str(hf), "download", BRANCHES[branch], "--revision", branch, "--local-dir", str(dest)],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert downloaded(dest) == expected_files(built, branch), branch
        dest = tmp_path / "dl" / "main"
        proc = subprocess.run(
            [str(hf), "download", REPO_GPTQ, "--local-dir", str(dest)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 0 and downloaded(dest) == expected_files(built, "gptq-4bit-32g-actorder_True")
        port = int(url.rsplit(":", 1)[1])
    import socket

    with socket.socket() as s:  # the server stopped and freed its port
        s.bind(("127.0.0.1", port))


def test_card_command_writes_one_card_per_repo(built):
    proc = run_cli("card", "--config", str(built["config"]), "--out", str(built["out"]), check=True)
    assert len(proc.stdout.splitlines()) == 2
    for branch, repo in BRANCHES.items():
        card = (built["out"] / "cards" / repo.replace("/", "__") / "README.md").read_text()
        assert card.startswith("---\n") and branch in card


def test_card_links_go_where_it_is_published_and_publish_refuses_a_card_for_elsewhere(built, tmp_path):
    """Cards written for a git mirror link the family at the mirror and fetch with git; written for another hub,
    at that hub's pages with HF_ENDPOINT; a token in a git remote never reaches a card; and a publish to a
    destination the cards were not written for is refused, in one line naming the card and the command."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built["out"], out, ignore=shutil.ignore_patterns("published"))
    common = ("--config", str(built["config"]), "--out", str(out))
    mirror = tmp_path / "hub"
    run_cli("card", *common, "--git", str(mirror), check=True)
    gptq = (out / "cards" / REPO_GPTQ.replace("/", "__") / "README.md").read_text()
    gguf = (out / "cards" / REPO_GGUF.replace("/", "__") / "README.md").read_text()
    at = (mirror.resolve() / "models").as_uri()
    for card in (gptq, gguf):
        assert "huggingface.co/tester" not in card and "hf download" not in card
        assert f"({at}/{REPO_GPTQ})" in card and f"({at}/{REPO_GGUF})" in card  # the family list
    assert f"[gptq-8bit-32g-actorder_True]({at}/{REPO_GPTQ}) " in gptq  # a bare repository has no branch pages
    assert f"git clone --branch gptq-8bit-32g-actorder_True {at}/{REPO_GPTQ}" in gptq
    assert re.search(rf"git clone --branch gguf-\S+ {re.escape(at)}/{REPO_GGUF}\n", gguf), gguf
    # ...and the published README is that card
    proc = run_cli("publish", *common, "--variant", "gguf-q8_0", "--git", str(mirror))
    assert proc.returncode == 0, proc.stderr
    shown = subprocess.run(
        ["git", "--git-dir", str(mirror / "models" / REPO_GGUF), "show", "gguf-q8_0:README.md"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == gguf

    # Written for a mirror, sent to a hub: refused before anything is sent (the endpoint is never reached).
    proc = run_cli("publish", *common, "--variant", "gguf-q8_0", "--endpoint", "http://127.0.0.1:9")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{out / 'cards' / REPO_GGUF.replace('/', '__') / 'README.md'} links to {at}" in last
    assert "this publish goes to http://127.0.0.1:9" in last
    assert f"quantize card --config {built['config']} --out {out} --endpoint http://127.0.0.1:9" in last

    run_cli("card", *common, "--endpoint", "http://hub.example:8080/", check=True)
    gptq = (out / "cards" / REPO_GPTQ.replace("/", "__") / "README.md").read_text()
    assert f"(http://hub.example:8080/{REPO_GPTQ}/tree/gptq-8bit-32g-actorder_True)" in gptq
    assert f"HF_ENDPOINT=http://hub.example:8080 hf download {REPO_GPTQ} --revision" in gptq
    assert "set `HF_ENDPOINT=http://hub.example:8080`" in gptq and "huggingface.co/tester" not in gptq

    run_cli("card", *common, "--git", "https://bot:hf_secret@git.example.com/models/", check=True)
    for card in (out / "cards").glob("*/README.md"):
        text = card.read_text()
        assert "hf_secret" not in text and "bot@" not in text
        assert f"(https://git.example.com/models/{REPO_GPTQ})" in text

    # A format the config names but nothing of which passed has no repo to link: the family list leaves it out.
    import yaml

    data = yaml.safe_load(built["config"].read_text())
    data["variants"].append({"format": "awq", "bits": 4, "group_size": 32})
    more = built["config"].parent / f"with-awq-{tmp_path.name}.yaml"  # beside it: the same recipes resolve
    more.write_text(yaml.safe_dump(data))
    try:
        run_cli("card", "--config", str(more), "--out", str(out), check=True)
    finally:
        more.unlink()
    gptq = (out / "cards" / REPO_GPTQ.replace("/", "__") / "README.md").read_text()
    assert f"/{REPO_GGUF})" in gptq and "tiny-mistral-AWQ" not in gptq


def test_a_remote_that_does_not_hold_what_was_sent_fails_loudly(built, tmp_path):
    with serve(tmp_path / "hub", TOKEN) as hub:
        hub.tamper.add("quantize_config.json")
        proc = publish(built, "--variant", "gptq-8bit-32g", "--endpoint", hub.url)
        assert proc.returncode == 1
        assert "after upload, quantize_config.json has different content" in proc.stderr.splitlines()[-1]


def test_a_branch_moved_by_another_writer_is_not_overwritten(built, tmp_path):
    from quantize.hub.publish import MOVED

    with serve(tmp_path / "hub", TOKEN) as hub:  # after our listing, before our commit, someone else commits
        hub.before_next["commit"] = lambda: hub.write(REPO_GGUF, "gguf-q8_0", {"notes.md": b"another writer"})
        proc = publish(built, "--variant", "gguf-q8_0", "--endpoint", hub.url)
        assert error_line(proc) == f"error: {hub.url}: upload to {REPO_GGUF}@gguf-q8_0: {MOVED}"
        assert [name for name, _ in hub.calls].count("commit") == 1  # refused, not retried
        files = hub.files(REPO_GGUF, "gguf-q8_0")[1]
        assert set(files) == {".gitattributes", "notes.md"} and hub.read(files["notes.md"]) == b"another writer"


def test_git_publish_refuses_a_branch_moved_by_another_writer(built, tmp_path):
    from quantize.errors import BranchMoved
    from quantize.hub.git import GitTransport
    from quantize.hub.publish import MOVED, LocalFile, Publisher
    from quantize.project import load_config

    ours, other = GitTransport(tmp_path / "mirror"), GitTransport(tmp_path / "mirror")
    cards_for(built["config"], built["out"], "--git", str(tmp_path / "mirror"))
    other.scratch = tmp_path / "other-scratch"

    def other_writes(name: str) -> None:
        path = tmp_path / name
        path.write_text(f"{name} by another writer\n")
        head = other.listing(REPO_GGUF, "gguf-q8_0").head
        other.commit(REPO_GGUF, "gguf-q8_0", head, [LocalFile(name, path, path.stat().st_size, "")], [], name)

    listing = ours.listing

    def listing_then_another_commit(repo: str, branch: str):
        listed = listing(repo, branch)
        ours.listing = listing
        other_writes("notes.md")
        return listed

    ours.prepare(REPO_GGUF, "gguf-q8_0")
    other_writes("old.md")  # the branch exists: our commit will name it as parent and delete old.md
    ours.listing = listing_then_another_commit
    project = load_config(built["config"])
    with pytest.raises(BranchMoved) as err:
        Publisher(project, built["out"], ours).publish_all(project.select(["gguf-q8_0"]))
    assert str(err.value) == f"{ours.where}: push to {REPO_GGUF}@gguf-q8_0: {MOVED}"
    assert set(other.listing(REPO_GGUF, "gguf-q8_0").files) == {"old.md", "notes.md"}
    # Re-run, as the message says: the variant's own branch then holds its files and only those.
    record = Publisher(project, built["out"], ours).publish_all(project.select(["gguf-q8_0"]))[0][0]
    assert record.targets[0].deleted == ["notes.md", "old.md"]


def test_offline_mode_fails_at_once_with_how_to_fix(built):
    proc = publish(built, "--variant", "gguf-q8_0", "--endpoint", "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    assert error_line(proc).endswith(
        "HF_HUB_OFFLINE is set, so huggingface_hub makes no network calls; "
        "fix: unset HF_HUB_OFFLINE (or publish to a local mirror with --git ROOT)"
    )
    assert "retrying" not in proc.stderr


def test_publish_sends_the_card_card_wrote_and_refuses_without_one(built, tmp_path):
    """publish never writes cards: without one (or with one that does not list the variant) nothing is sent."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built["out"], out)
    card = out / "cards" / "tester__tiny-mistral-GGUF" / "README.md"
    card.write_text(card.read_text().replace("gguf-q8_0", "gguf-q8_x"))
    args = ["publish", "--config", str(built["config"]), "--out", str(out), "--variant", "gguf-q8_0"]
    proc = run_cli(*args, "--git", str(tmp_path / "mirror"))
    assert (
        proc.returncode == 1 and "gguf-q8_0: tester/tiny-mistral-GGUF has a card that does not list it" in proc.stderr
    )
    shutil.rmtree(out / "cards")
    proc = run_cli(*args, "--git", str(tmp_path / "mirror"))
    assert proc.returncode == 1 and "tester/tiny-mistral-GGUF has no card" in proc.stderr
    assert "(fix: write the cards first: python -m quantize card" in proc.stderr
    assert not (tmp_path / "mirror").exists() and not (out / "cards").exists()
