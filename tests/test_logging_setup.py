"""Logging set-up: console plus a rotating file under the data dir, sized and counted from config."""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.__main__ import setup_logging
from server.config import Config, load_config


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_defaults_come_from_the_config_file() -> None:
    config = load_config(env={})
    assert (config.logging.level, config.logging.file_max_mb, config.logging.file_count) == ("INFO", 10, 5)


def test_console_and_rotating_file_with_sizes_from_config(
    make_config: Callable[..., Config], data_dir: Path, restore_root_logger: None
) -> None:
    config = make_config(logging={"level": "DEBUG", "file_max_mb": 2, "file_count": 3})
    console, file = setup_logging(config)
    assert isinstance(console, logging.StreamHandler)
    assert isinstance(file, logging.handlers.RotatingFileHandler)
    assert (file.maxBytes, file.backupCount) == (2 * 1024 * 1024, 3)
    assert logging.getLogger().level == logging.DEBUG

    logging.getLogger("server.live.peers").debug("peer state stream=%s state=%s", "abc123", "connected")
    log = data_dir / "logs" / "stylize.log"
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("DEBUG server.live.peers: peer state stream=abc123 state=connected")

    # Rotation keeps `file_count` old files (made small here so the test writes little).
    file.maxBytes = 400
    for index in range(60):
        logging.getLogger("server.live.track").info("frame %d stream=%s", index, "abc123")
    assert sorted(p.name for p in log.parent.iterdir()) == [f"stylize.log{s}" for s in ("", ".1", ".2", ".3")]


def test_level_from_config_filters(
    make_config: Callable[..., Config], data_dir: Path, restore_root_logger: None
) -> None:
    setup_logging(make_config(logging={"level": "WARNING"}))
    logging.getLogger("server.app").info("quiet")
    logging.getLogger("server.app").warning("loud")
    assert (data_dir / "logs" / "stylize.log").read_text().count("\n") == 1
