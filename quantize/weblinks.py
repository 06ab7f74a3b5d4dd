"""Where a card's links point: the hub the family is published to, not huggingface.co by habit.

`card` writes links for one destination (the same `--endpoint` / `--git` that `publish` takes)
and records it beside the card; `publish` sends the card as written, so it refuses a card whose
links name another destination rather than push one that points readers elsewhere. Kept at the
bottom of the graph: the card sections (formats/) and the publisher (hub/) both read it.

Link shapes: a hub endpoint (huggingface.co or a server speaking its API) gets the hub's web
paths (`/REPO/tree/BRANCH`, `/REPO/blob/BRANCH/FILE`); a git root has no such pages, so every
link is the repository itself (`ROOT/REPO` for a URL prefix, as the git transport pushes to;
`file://ROOT/models/REPO` for a local mirror folder) and the text names the branch. The base
model's links go to the hub it is downloaded from (HF_ENDPOINT or huggingface.co).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

HF_WEB = "https://huggingface.co"


def default_endpoint() -> str:
    """huggingface_hub's own default (HF_ENDPOINT when set, else huggingface.co), the one its clients and our
    HTTP transport use: one answer for where a card links and where `publish` sends."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def is_url(root: str) -> bool:
    """A URL or an scp-style remote (`git@host:path`), as git reads a remote; anything else is a folder."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", root)) or bool(re.match(r"^[^/]+@[^:]+:", root))


def _public(url: str) -> str:
    """The URL without credentials (a token in a git remote must never reach a card)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)).rstrip("/")


@dataclass(frozen=True)
class Links:
    """One destination: `root` is what links start with, `web` whether it has the hub's pages."""

    root: str
    web: bool

    @classmethod
    def endpoint(cls, url: str | None = None) -> Links:
        return cls(_public(url or default_endpoint()), True)

    @classmethod
    def git(cls, root: str | Path) -> Links:
        text = str(root)
        if is_url(text):
            return cls(_public(text), False)
        return cls((Path(text).resolve() / "models").as_uri(), False)

    @classmethod
    def destination(cls, endpoint: str | None, git: str | None) -> Links:
        """What `card` and `publish` make of the same pair of options."""
        return cls.git(git) if git else cls.endpoint(endpoint)

    def repo(self, repo: str) -> str:
        return f"{self.root}/{repo}"

    def tree(self, repo: str, branch: str) -> str:
        return f"{self.root}/{repo}/tree/{branch}" if self.web else self.repo(repo)

    def blob(self, repo: str, branch: str, name: str) -> str:
        return f"{self.root}/{repo}/blob/{branch}/{name}" if self.web else self.repo(repo)

    @property
    def download_env(self) -> str:
        """What a download command needs in front so huggingface_hub asks this hub ("" for huggingface.co)."""
        return f"HF_ENDPOINT={self.root} " if self.web and self.root != HF_WEB else ""

    @property
    def label(self) -> str:
        """How the CLI names the destination in a fix: the options that give these links."""
        if self.web:
            return f"--endpoint {self.root}"
        if self.root.startswith("file://"):
            return f"--git {Path(url2pathname(urlsplit(self.root).path)).parent}"
        return f"--git {self.root}"


def base_links() -> Links:
    """Where the base model's links go: the hub `base_model.id` is resolved against."""
    return Links.endpoint()
