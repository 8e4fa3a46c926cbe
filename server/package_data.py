"""Folders the server reads that ship inside the `server` package (`configs/`, `static/`), found
through `importlib.resources`, so a wheel installed anywhere serves the same files as a checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def package_folder(name: str) -> Path:
    """A data folder of the `server` package as a real path (aiohttp serves static files from one;
    wheels install unpacked, so it is one)."""
    return Path(str(resources.files("server") / name))
