"""`python -m server`: parse flags, set up logging, serve until interrupted.

Flags are parsed before anything heavy is imported, so `--help` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.config import Config, ServerConfig


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description="Real-time WebRTC video stylization server")
    parser.add_argument("--config", type=Path, help="TOML file overriding configs/default.toml")
    parser.add_argument("--host", help="address to listen on")
    parser.add_argument("--port", type=int, help="HTTP port")
    parser.add_argument("--model", help='model spec: hub id, local folder, "tiny" or "arch:sd-turbo"')
    parser.add_argument("--data-dir", type=Path, help="where models, the database, jobs and logs live")
    parser.add_argument("--osc-port", type=int, help="UDP port for OSC control")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    from server.config import load_config

    overrides: dict[str, dict[str, Any]] = {}
    for value, section, key in (
        (args.host, "server", "host"),
        (args.port, "server", "port"),
        (args.model, "model", "id"),
        (args.data_dir, "server", "data_dir"),
        (args.osc_port, "osc", "port"),
    ):
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return load_config(args.config, overrides=overrides)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(config: Config) -> list[logging.Handler]:
    """Console plus a rotating file `<data_dir>/logs/stylize.log`, at the configured level.

    Returns the handlers it added to the root logger (so a caller can take them off again).
    """
    folder = Path(config.server.data_dir) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    console = logging.StreamHandler(sys.stderr)
    file = logging.handlers.RotatingFileHandler(
        folder / "stylize.log",
        maxBytes=config.logging.file_max_mb * 1024 * 1024,
        backupCount=config.logging.file_count,
        encoding="utf-8",
    )
    formatter = logging.Formatter(LOG_FORMAT)
    root = logging.getLogger()
    for handler in (console, file):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(config.logging.level)
    for noisy in ("aioice", "aiortc", "httpx", "huggingface_hub", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return [console, file]


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """https for phones and other machines on the LAN (browsers give the camera only to secure pages)."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key or None)
    return context


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Only now the server itself: --help and a bad flag never wait for it.
    from aiohttp import web

    from server.app import create_app
    from server.config import ConfigError
    from server.http.access_log import AccessLogger

    try:
        config = config_from_args(args)
    except ConfigError as e:
        print(f"python -m server: {e}", file=sys.stderr)
        sys.exit(2)
    setup_logging(config)
    try:
        ssl_context = tls_context(config.server)
    except (OSError, ssl.SSLError) as e:
        logging.getLogger("server").error("TLS off: cannot load tls_cert/tls_key: %s", e)
        sys.exit(2)
    web.run_app(
        create_app(config),
        host=config.server.host,
        port=config.server.port,
        ssl_context=ssl_context,
        access_log_class=AccessLogger,
        print=lambda message: logging.getLogger("server").info(message.strip()),
    )


if __name__ == "__main__":
    main()
