"""The first ten minutes: failures that say what to fix in one line, a quiet console, a look that survives a restart."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline import hub
from server import keys
from server.__main__ import parse_args
from server.config import ROOT, Config, ConfigError, load_config, token_source
from server.engine_service import download_model
from server.testing.servers import free_port, server_process, start_server, stop_server, wait_ready
from server.testing.waiting import eventually

# Server processes of its own: run alone, after the rest (`make test`).
pytestmark = pytest.mark.heavy

OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    variables = {**os.environ, "STYLIZE_OSC_ENABLED": "false", **(env or {})}
    command = [sys.executable, "-m", "server", *args]
    return subprocess.run(command, cwd=ROOT, env=variables, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--modle", "tiny"], "unrecognized flag --modle (did you mean --model?)"),
        (["--port=9", "--data-dri", "x"], "unrecognized flag --data-dri (did you mean --data-dir?)"),
        (["download", "--ful-precision"], "unrecognized flag --ful-precision (did you mean --full-precision?)"),
        (["--zzz"], "unrecognized flag --zzz"),
    ],
)
def test_a_mistyped_flag_is_named_with_the_near_one(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"python -m server: error: {said}" and "{download}" not in last
    assert parse_args(["--mod", "tiny"]).model == "tiny", "abbreviations argparse takes still pass"


def test_config_mistakes_name_the_near_key_and_how_lists_are_written(tmp_path: Path) -> None:
    typo = tmp_path / "show.toml"
    typo.write_text("[server]\nprot = 9000\n[sever]\nport = 1\n")
    with pytest.raises(ConfigError) as error:
        load_config(typo, env={})
    assert "[server] prot (STYLIZE_SERVER_PROT): not a known key; did you mean port?" in str(error.value)
    assert "[sever]: not a known section; did you mean server?" in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_config(env={"STYLIZE_SERVER_CORS_ORIGINS": "http://show.example"})
    assert "STYLIZE_SERVER_CORS_ORIGINS='[" in str(error.value) and "as JSON" in str(error.value)
    with pytest.raises(ConfigError, match="STYLIZE_OSC_ALLOW holds invalid JSON"):
        load_config(env={"STYLIZE_OSC_ALLOW": '["10.0.0.0/8",'})


def test_a_dotenv_file_in_the_working_directory_is_read_under_the_real_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "# the seed's file\nexport STYLIZE_SECURITY_API_TOKEN='from-dotenv'  \n"
        "STYLIZE_DEFAULTS_SEED=7 # a comment\nOTHER_TOOL=x\n\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STYLIZE_SECURITY_API_TOKEN", raising=False)
    monkeypatch.delenv("STYLIZE_DEFAULTS_SEED", raising=False)
    config = load_config()
    assert (config.security.api_token, config.defaults.seed) == ("from-dotenv", 7)
    assert token_source(None) == f"STYLIZE_SECURITY_API_TOKEN in {tmp_path.resolve() / '.env'}"
    monkeypatch.setenv("STYLIZE_SECURITY_API_TOKEN", "from-env")
    assert load_config().security.api_token == "from-env", "the real environment wins"
    assert token_source(None) == "STYLIZE_SECURITY_API_TOKEN in the environment"
    assert load_config(env={}).security.api_token == "", "an explicit environment reads no file"


async def test_the_start_up_says_which_file_set_the_token_and_never_the_token(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("STYLIZE_SECURITY_API_TOKEN=s3cret-token\n")
    monkeypatch.delenv("STYLIZE_SECURITY_API_TOKEN", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    log = tmp_path / "console.log"
    async with aiohttp.ClientSession() as http, server_process(data_dir, log, cwd=tmp_path) as running:
        await wait_ready(http, running.url)
        async with http.get(f"{running.url}/api/settings") as response:
            assert response.status == 401, "the .env's token guards the API"
        async with http.get(f"{running.url}/api/settings?token=s3cret-token") as response:
            assert response.status == 200
    text = log.read_text()
    assert f"API token set by STYLIZE_SECURITY_API_TOKEN in {tmp_path / '.env'}" in text
    assert "s3cret-token" not in text


def test_a_busy_port_is_one_line_naming_it_and_the_flag(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _server("--model", "tiny", "--data-dir", str(data_dir), "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"python -m server: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "choose another port with --port (or STYLIZE_PORT)"
    ]


@pytest.mark.parametrize("which", ["osc", "oscquery"])
def test_a_busy_osc_or_oscquery_port_is_one_line_naming_its_setting(data_dir: Path, which: str) -> None:
    kind = socket.SOCK_DGRAM if which == "osc" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            busy.listen()
        taken = busy.getsockname()[1]
        osc_port = taken if which == "osc" else free_port()
        env = {"STYLIZE_OSC_ENABLED": "true", "STYLIZE_OSC_QUERY_PORT": str(taken if which == "oscquery" else 0)}
        args = ["--model", "tiny", "--data-dir", str(data_dir), "--port", "0", "--osc-port", str(osc_port)]
        result = _server(*args, env=env)
    assert result.returncode == 2
    what, knob = {
        "osc": ("the OSC port", "--osc-port (or [osc] port, STYLIZE_OSC_PORT)"),
        "oscquery": ("the OSCQuery port", "[osc] query_port"),
    }[which]
    assert result.stderr.splitlines() == [
        f"python -m server: cannot listen on {what} 127.0.0.1:{taken} (Address already in use); "
        f"choose another with {knob}, or set [osc] enabled = false"
    ]


def test_download_offline_names_the_component_and_the_source(data_dir: Path) -> None:
    folder = data_dir / "models" / "tiny"
    result = _server("--data-dir", str(data_dir), "download", str(folder), "--vae", "madebyollin/taesd", env=OFFLINE)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "python -m server: vae 'madebyollin/taesd' (hub): offline (HF_HUB_OFFLINE is set) and not in the hub cache "
        f"{hub.constants.HF_HUB_CACHE}"
    ]
    # The same command for a model that needs nothing from the hub succeeds (in this process: cheaper).
    config = load_config(env={}, overrides={"server": {"data_dir": str(data_dir)}, "model": {"id": "tiny"}})
    assert download_model(config, full_precision=False, progress=lambda done, total: None).startswith("ready offline")


async def test_a_folder_model_runs_offline_with_its_own_vae(
    make_config: Callable[..., Config], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    # The twin's 32-wide configs cannot tell its family: the folder is loaded as the one named.
    folder = {"id": str(data_dir / "models" / "tiny"), "family": "sd-turbo"}
    running = await start_server(make_config(model=folder, engine={"warmup": False}))
    try:
        async with running.http.get(running.url("/readyz")) as response:
            assert response.status == 200
    finally:
        await stop_server(running)


async def test_a_model_whose_family_cannot_be_told_fails_readiness_naming_the_fix(
    make_config: Callable[..., Config], data_dir: Path
) -> None:
    running = await start_server(make_config(model={"id": str(data_dir / "models" / "tiny")}), ready=False)
    try:

        async def failed() -> dict[str, Any] | None:
            async with running.http.get(running.url("/readyz")) as response:
                body: dict[str, Any] = await response.json()
            return body if response.status == 503 and body["state"] == "failed" else None

        body = await eventually(failed, 30, what="readiness failed")
        assert "cannot tell the family of model" in body["reason"] and "[model] family" in body["reason"]
    finally:
        await stop_server(running)


def test_an_unknown_family_in_the_config_is_refused_at_start(data_dir: Path) -> None:
    result = _server("--model", "tiny", "--data-dir", str(data_dir), env={"STYLIZE_MODEL_FAMILY": "sd3"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "python -m server: invalid configuration: [model] family (STYLIZE_MODEL_FAMILY): "
        "Input should be 'auto', 'sd-turbo', 'sd15' or 'sdxl'"
    ]


async def test_a_vae_that_cannot_be_had_is_one_error_line_naming_it(
    make_config: Callable[..., Config],
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    config = make_config(model={"id": str(data_dir / "models" / "tiny"), "vae": "madebyollin/taesd"})
    running = await start_server(config, ready=False)
    try:

        async def failed() -> dict[str, Any] | None:
            async with running.http.get(running.url("/readyz")) as response:
                body: dict[str, Any] = await response.json()
            return body if body["state"] == "failed" else None

        body = await eventually(failed, 60, what="the engine in state failed")
        assert body["reason"].startswith("vae 'madebyollin/taesd' (hub): offline (HF_HUB_OFFLINE is set)")
        assert "python -m server download" in body["reason"]
    finally:
        await stop_server(running)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "vae 'madebyollin/taesd' (hub)" in errors[0].getMessage()


def _fake_hub(monkeypatch: pytest.MonkeyPatch, tiny: Path, snapshots: Path) -> list[str]:
    """The hub's edge, replaced: a repository listing and snapshot downloads made of the tiny model's files."""
    fetched: list[str] = []

    class Api:
        def list_repo_files(self, repo: str) -> list[str]:
            root = tiny / "vae" if repo == "madebyollin/taesd" else tiny
            return [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()]

    def snapshot_download(repo: str, *, allow_patterns: list[str], **options: Any) -> str:
        folder = snapshots / repo.replace("/", "--")
        if options.get("local_files_only"):
            if not folder.is_dir():
                raise hub.LocalEntryNotFoundError("not cached")
            return str(folder)
        root = tiny / "vae" if repo == "madebyollin/taesd" else tiny
        files = [root / name for name in allow_patterns]
        bar = options["tqdm_class"](name="huggingface_hub.snapshot_download", total=0, unit="B")
        bar.total = sum(path.stat().st_size for path in files)
        for path in files:
            (folder / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.relative_to(root))
            bar.update(path.stat().st_size)
        fetched.append(repo)
        return str(folder)

    monkeypatch.setattr(hub, "HfApi", Api)
    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    return fetched


async def test_a_hub_model_downloads_once_with_progress_then_loads_from_the_cache(
    make_config: Callable[..., Config],
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetched = _fake_hub(monkeypatch, data_dir / "models" / "tiny", tmp_path / "hub")
    config = make_config(model={"id": "example/turbo", "family": "sd-turbo"}, engine={"warmup": False})
    with caplog.at_level(logging.INFO, logger="server.engine_service"):
        for _ in range(2):
            running = await start_server(config)
            await stop_server(running)
    assert fetched == ["example/turbo", "madebyollin/taesd"]  # the second start found both in the cache
    progress = [
        record.getMessage() for record in caplog.records if "downloading model=example/turbo" in record.getMessage()
    ]
    assert progress and progress[-1].endswith("(100%)"), progress


def test_choose_files_takes_one_weights_variant_per_folder() -> None:
    files = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "safety_checker/model.safetensors",
    ]
    patterns = ["unet/config.json", "unet/*.safetensors", "unet/*.bin", "text_encoder/*", "tokenizer/*"]
    assert hub.choose_files(files, patterns, fp16=True) == [
        "text_encoder/config.json",
        "text_encoder/model.safetensors",  # no fp16 variant there: the full weights
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert "unet/diffusion_pytorch_model.safetensors" in hub.choose_files(files, patterns, fp16=False)


async def test_the_console_says_what_matters_and_nothing_else(data_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    async with aiohttp.ClientSession() as http, server_process(data_dir, log) as running:
        await wait_ready(http, running.url)
        for path in ("/readyz", "/health", "/api/settings", "/api/stats", "/static/style.css"):
            async with http.get(f"{running.url}{path}") as response:
                assert response.status == 200
        async with http.patch(f"{running.url}/api/settings", json={"strength": 0.4}) as response:
            assert response.status == 200
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    line_format = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")
    assert all(line_format.match(line) for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    assert "engine ready" in text and "settings changed scope=global source=http" in text
    assert '"PATCH /api/settings' in text  # a change is worth a line; polling is not
    for noise in ("/readyz", "/health", "/api/stats", "/static/", "torchvision", "accelerate", "config attributes"):
        assert noise not in text, f"{noise!r} on the console:\n{text}"


async def test_the_look_survives_a_restart_until_reset(make_config: Callable[..., Config]) -> None:
    config = make_config(engine={"warmup": False})
    look = {"prompt": "a charcoal drawing", "strength": 0.72, "seed": 7, "paused": True}
    first = await start_server(config)
    try:
        async with first.http.patch(first.url("/api/settings"), json=look) as response:
            assert response.status == 200
    finally:
        await stop_server(first)
    second = await start_server(config)
    try:
        async with second.http.get(second.url("/api/settings")) as response:
            assert {name: value for name, value in (await response.json()).items() if name in look} == look
        async with second.http.post(second.url("/api/settings/reset")) as response:
            assert response.status == 200
            reset = await response.json()
        defaults = config.defaults.model_dump()
        assert {name: reset[name] for name in defaults} == defaults and reset["paused"] is False
        assert second.app[keys.SETTINGS].global_settings.prompt == defaults["prompt"]
    finally:
        await stop_server(second)
    third = await start_server(config)
    try:
        async with third.http.get(third.url("/api/settings")) as response:
            assert (await response.json())["prompt"] == config.defaults.prompt
    finally:
        await stop_server(third)
