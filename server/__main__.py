"""`python -m server`: parse flags, set up logging, serve until interrupted; `python -m server download`.

Flags are parsed before anything heavy is imported, so `--help` and a bad flag answer at once. Every
way start-up can fail for a reason the user can fix (a bad config value, a busy port, a certificate
that cannot load, a model that cannot be had) is one line naming it and what to change, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import logging.handlers
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from server.stuck_threads import exit_past_stuck_threads

if TYPE_CHECKING:
    from aiohttp import web

    from server.config import Config, ServerConfig

PROG = "python -m server"
# After the server stopped, worker threads still running this long are stuck (a codec deadlock).
EXIT_GRACE_S = 5.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Real-time WebRTC video stylization server")
    parser.add_argument("--config", type=Path, help="TOML file overriding configs/default.toml")
    parser.add_argument("--host", help="address to listen on")
    parser.add_argument("--port", type=int, help="HTTP port")
    parser.add_argument(
        "--model",
        help="model spec: hub id, local folder, a .safetensors checkpoint, a twin (tiny, tiny-sd15, tiny-sdxl) "
        "or arch:sd-turbo|sd15|sdxl-turbo",
    )
    parser.add_argument("--data-dir", type=Path, help="where models, the database, jobs and logs live")
    parser.add_argument("--osc-port", type=int, help="UDP port for OSC control")
    parser.add_argument("--osc-host", help="address the OSC listener binds (0.0.0.0 for controllers on the LAN)")
    cluster = parser.add_argument_group("cluster", "past one GPU and one machine (README: Past one GPU)")
    cluster.add_argument(
        "--workers", help='start this many worker processes on this box behind this one ("auto": one per GPU)'
    )
    cluster.add_argument("--role", choices=["none", "front", "worker"], help="this process's part in a cluster")
    cluster.add_argument("--redis-url", help="the cluster's Redis, shared by every node (redis://host:6379/0)")
    commands = parser.add_subparsers(dest="command", metavar="{download}")
    download = commands.add_parser(
        "download",
        help="fetch every file a model needs into the hub cache, ahead of a show (then run with HF_HUB_OFFLINE=1)",
    )
    download.add_argument("model", nargs="?", help="model spec (default: the configured [model] id)")
    download.add_argument("--vae", help='VAE: "auto", "" (the model\'s own), or a hub id/folder (default: [model] vae)')
    download.add_argument(
        "--full-precision",
        action="store_true",
        help="also fetch the fp32 weights (fp16 is the default)",
    )
    flags = [*_flags(parser), *_flags(download)]
    for arg in argv:
        flag = arg.split("=", 1)[0]
        # argparse takes a word it does not know as the sub-command and names `{download}`, not the
        # flag; and a known prefix is an abbreviation it takes, so only a flag nothing starts with is named.
        if flag.startswith("--") and flag != "--" and not any(known.startswith(flag) for known in flags):
            near = difflib.get_close_matches(flag, flags, n=1)
            parser.error(f"unrecognized flag {flag}" + (f" (did you mean {near[0]}?)" if near else ""))
        if arg == "--":
            break
    return parser.parse_args(argv)


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every long flag the parser (not its sub-commands) takes."""
    return [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]


def config_from_args(args: argparse.Namespace) -> Config:
    from server.config import load_config

    overrides: dict[str, dict[str, Any]] = {}
    for value, section, key in (
        (args.host, "server", "host"),
        (args.port, "server", "port"),
        (args.model, "model", "id"),
        (args.data_dir, "server", "data_dir"),
        (args.osc_port, "osc", "port"),
        (args.osc_host, "osc", "host"),
        (getattr(args, "workers", None), "cluster", "workers"),
        (getattr(args, "role", None), "cluster", "role"),
        (getattr(args, "redis_url", None), "cluster", "redis_url"),
        (getattr(args, "vae", None), "model", "vae"),
    ):
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return load_config(args.config, overrides=overrides)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(config: Config) -> list[logging.Handler]:
    """Console plus a rotating file `<data_dir>/logs/stylize.log`, at the configured level.

    In a cluster each process names itself in every line and keeps a file of its own
    (`<role>-<port>.log`: the nodes of one box share the data dir). Returns the handlers it added to
    the root logger (so a caller can take them off again).
    """
    folder = Path(config.server.data_dir) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    cluster = config.cluster
    node = f"{cluster.role}-{config.server.port}" if cluster.enabled else ""
    console = logging.StreamHandler(sys.stderr)
    file = logging.handlers.RotatingFileHandler(
        folder / (f"{node}.log" if node else "stylize.log"),
        maxBytes=config.logging.file_max_mb * 1024 * 1024,
        backupCount=config.logging.file_count,
        encoding="utf-8",
    )
    formatter = logging.Formatter(LOG_FORMAT.replace("%(name)s", f"[{node}] %(name)s") if node else LOG_FORMAT)
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


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts, so a busy port stops nothing half-made."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family)


def osc_ports_free(config: Config) -> None:
    """A busy OSC (UDP) or OSCQuery (TCP) port is one line too, not a traceback from inside start-up.

    Probed and let go (the listeners bind later, in the app): the window between is start-up's own
    few hundred milliseconds, and a port taken in it still fails, with the traceback.
    """
    osc = config.osc
    if not osc.enabled:
        return
    probes = [(socket.SOCK_DGRAM, osc.port, "the OSC port", "--osc-port (or [osc] port, STYLIZE_OSC_PORT)")]
    if osc.query_port:
        probes.append((socket.SOCK_STREAM, osc.query_port, "the OSCQuery port", "[osc] query_port"))
    for kind, port, what, knob in probes:
        family = socket.getaddrinfo(osc.host, port, type=kind)[0][0]
        try:
            with socket.socket(family, kind) as probe:
                if kind == socket.SOCK_STREAM:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener will
                probe.bind((osc.host, port))
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            where = f"{what} {osc.host}:{port} ({why})"
            fail(f"cannot listen on {where}; choose another with {knob}, or set [osc] enabled = false")


def database_intact(config: Config) -> None:
    """A broken database is set aside and start-up stops, saying so: never served as an empty one."""
    from server.app import database_path
    from server.db import broken_reason, set_aside

    path = database_path(config)
    reason = broken_reason(path)
    if reason is not None:
        aside = set_aside(path)
        fail(
            f"the database {path} is broken: {reason}; moved it to {aside} (job folders are kept); "
            "start again for a new, empty one, or put a backup in its place"
        )


def fail(message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(2)


def serve(config: Config, token_from: str = "") -> None:
    """Listen and run; `token_from` names the place that set the API token (logged, the token never)."""
    # Only now the server itself: --help and a bad flag never wait for it.
    from server.app import create_app

    try:
        ssl_context = tls_context(config.server)
    except (OSError, ssl.SSLError) as e:
        key = f" with the key {config.server.tls_key!r}" if config.server.tls_key else ""
        fail(
            f"cannot load the TLS certificate {config.server.tls_cert!r}{key} ({e}); "
            "fix [server] tls_cert/tls_key (STYLIZE_SERVER_TLS_CERT, STYLIZE_SERVER_TLS_KEY)"
        )
    host, port = config.server.host, config.server.port
    try:
        sock = listen(host, port)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        fail(f"cannot listen on {host}:{port} ({why}); choose another port with --port (or STYLIZE_PORT)")
    from server.extras import missing

    for problem in missing(config):
        fail(problem)
    osc_ports_free(config)
    database_intact(config)
    if not port:  # the port the system picked: where the other nodes of a cluster reach this one
        bound = config.server.model_copy(update={"port": int(sock.getsockname()[1])})
        config = config.model_copy(update={"server": bound})
    setup_logging(config)
    if token_from:
        logging.getLogger("server").info("API token set by %s", token_from)
    asyncio.run(_serve(create_app(config), sock, ssl_context, config.server))
    exit_past_stuck_threads(EXIT_GRACE_S)


async def _serve(
    app: web.Application, sock: socket.socket, ssl_context: ssl.SSLContext | None, server: ServerConfig
) -> None:
    """aiohttp's `run_app`, with the listening socket's connections capped (`server.http.connection_cap`)."""
    from aiohttp import web

    from server.http.access_log import AccessLog
    from server.http.connection_cap import ACCEPT_BACKLOG, ConnectionCap, connection_limit

    log = logging.getLogger("server")
    cap = ConnectionCap(connection_limit(server.max_connections))
    app.middlewares.append(cap.busy_middleware())
    runner = web.AppRunner(
        app, access_log_class=AccessLog, keepalive_timeout=server.idle_connection_s, handler_cancellation=False
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    listening = None
    try:
        cap.attach(runner.server)
        listening = await loop.create_server(cap, sock=sock, ssl=ssl_context, backlog=ACCEPT_BACKLOG)
        scheme = "https" if ssl_context else "http"
        host, port = sock.getsockname()[:2]
        log.info("serving on %s://%s:%d (at most %d connections)", scheme, host, port, cap.limit)
        await stop.wait()
    finally:
        if listening is not None:
            listening.close()
        await runner.cleanup()


def download(config: Config, full_precision: bool) -> None:
    """Fetch the configured model's files into the hub cache (or build `tiny`), with progress on stderr."""
    from server.engine_service import ModelNotFetched, describe_download, download_model

    def show(done: int, total: int) -> None:
        print(f"\r{describe_download(done, total)}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        where = download_model(config, full_precision=full_precision, progress=show)
    except ModelNotFetched as e:
        fail(str(e))
    print(f"{config.model.id}: {where}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from server.config import ConfigError, token_source

    try:
        config = config_from_args(args)
        token_from = token_source(args.config) if config.security.api_token else ""
    except ConfigError as e:
        fail(str(e))
    if args.command == "download":
        download(config, args.full_precision)
    else:
        serve(config, token_from)


if __name__ == "__main__":
    main()
