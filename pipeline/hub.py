"""Model files from the Hugging Face hub, kept in its standard cache (`HF_HOME`, `HF_HUB_CACHE`).

What the cache holds loads without the network. What it lacks is downloaded once, after a single
check that the hub can be reached at all: offline, the answer comes at once instead of after
huggingface_hub's retries with back-off (half a minute per file). Weights come as the fp16 variant
where the repository has one and fp16 is wanted (half the download), else as the full files.
"""

from __future__ import annotations

import fnmatch
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import tqdm as hub_tqdm

# bytes done, bytes in all (0 while unknown)
Progress = Callable[[int, int], None]

WEIGHTS = (".safetensors", ".bin")
REACH_TIMEOUT_S = 3.0


class HubUnavailable(Exception):
    """The files cannot be had from the hub; the message says why in a few words, with the fix."""


def is_hub_id(name: str) -> bool:
    """`org/name` (or `name`) as the hub spells ids, as opposed to a path on this machine."""
    return not name.startswith(("/", ".", "~")) and name.count("/") <= 1 and not os.path.exists(name)


def hub_reachable(timeout_s: float = REACH_TIMEOUT_S) -> bool:
    """One TCP connection to the hub's endpoint; False at once when `HF_HUB_OFFLINE` is set."""
    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def fetch(repo: str, patterns: list[str], *, fp16: bool, progress: Progress | None = None) -> Path:
    """The local snapshot folder of `repo` holding the files `patterns` match: from the cache, else downloaded.

    Raises `HubUnavailable`.
    """
    found = cached(repo, patterns)
    if found is not None:
        return found
    if not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise HubUnavailable(f"offline ({why}) and not in the hub cache {constants.HF_HUB_CACHE}")
    try:
        files = choose_files(HfApi().list_repo_files(repo), patterns, fp16=fp16)
        folder = snapshot_download(repo, allow_patterns=files, tqdm_class=progress_bar(progress))
    except GatedRepoError as e:
        raise HubUnavailable("gated: accept its licence on huggingface.co, then `hf auth login`") from e
    except RepositoryNotFoundError as e:
        raise HubUnavailable("no such repository on the hub (or a private one: `hf auth login`)") from e
    except (HfHubHTTPError, OSError) as e:
        raise HubUnavailable(f"download failed: {e}") from e
    return Path(str(folder))


def cached(repo: str, patterns: list[str]) -> Path | None:
    """The cached snapshot, when every folder the patterns name holds files (weights where wanted)."""
    try:
        folder = Path(str(snapshot_download(repo, allow_patterns=patterns, local_files_only=True)))
    except (LocalEntryNotFoundError, OSError):
        return None
    present = [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()]
    # Weight patterns are alternatives (.safetensors or .bin, fp16 or full): a folder needs one of them.
    if any(not fnmatch.filter(present, pattern) for pattern in patterns if not pattern.endswith(WEIGHTS)):
        return None
    for weights_folder in {PurePosixPath(pattern).parent for pattern in patterns if pattern.endswith(WEIGHTS)}:
        if not any(PurePosixPath(name).parent == weights_folder and name.endswith(WEIGHTS) for name in present):
            return None
    return folder


def choose_files(repo_files: Iterable[str], patterns: list[str], *, fp16: bool) -> list[str]:
    """The files to download: what `patterns` match, with one weights format and variant per folder.

    Per folder: safetensors over pickled .bin; the `.fp16.` variant when `fp16` and it exists, else
    the full-precision files (and the fp16 ones where they are all there is).
    """
    matched = sorted({name for name in repo_files for pattern in patterns if fnmatch.fnmatch(name, pattern)})
    chosen = [name for name in matched if not name.endswith(WEIGHTS)]
    by_folder: dict[str, list[str]] = {}
    for name in matched:
        if name.endswith(WEIGHTS):
            by_folder.setdefault(str(PurePosixPath(name).parent), []).append(name)
    for names in by_folder.values():
        safetensors = [n for n in names if n.endswith(".safetensors")] or names
        half = [n for n in safetensors if ".fp16." in n]
        full = [n for n in safetensors if ".fp16." not in n]
        chosen += (half if fp16 and half else full) or half
    return sorted(chosen)


def progress_bar(report: Progress | None) -> type[hub_tqdm]:
    """A tqdm class for `snapshot_download` that reports the byte count of the whole download and prints nothing."""

    class ReportingBar(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # The snapshot's aggregate byte bar; the per-file and transfer bars feed it or repeat it.
            self._reports = report is not None and kwargs.get("name") == "huggingface_hub.snapshot_download"
            self._done = 0
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._reports and report is not None:
                self._done += int(n or 0)
                report(self._done, int(self.total or 0))
            return super().update(n)

    return ReportingBar
