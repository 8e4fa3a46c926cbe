"""Configuration: `configs/default.toml`, an optional user file, `STYLIZE_...` variables, then flags.

The variables come from the environment and, under it, from a `.env` file in the working directory
(the seed systems read one; the real environment wins).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from server.fields import Guidance, Prompt, Seed, Steps, Strength
from server.package_data import package_folder

# The source tree, for tests and benchmarks; what the server reads ships inside the package (a wheel too).
ROOT = Path(__file__).resolve().parent.parent
CONFIGS = package_folder("configs")
DEFAULT_CONFIG = CONFIGS / "default.toml"

# Short variables for the knobs people set most (the same ones the command line has).
ENV_ALIASES = {
    "STYLIZE_MODEL": ("model", "id"),
    "STYLIZE_HOST": ("server", "host"),
    "STYLIZE_PORT": ("server", "port"),
    "STYLIZE_DATA_DIR": ("server", "data_dir"),
}


# Read from the working directory, as the seed systems (python-dotenv) did.
DOTENV = Path(".env")
TOKEN_VARIABLE = "STYLIZE_SECURITY_API_TOKEN"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: list[str]) -> list[Network]:
    """Addresses and CIDRs from an allow-list (`[osc] allow`, `[server] trusted_proxies`)."""
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def address_in(address: str | None, allowed: list[Network]) -> bool:
    """Whether an address (IPv4, IPv6, IPv4-mapped IPv6, with or without a zone) is in `allowed`."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in allowed)


class ConfigError(ValueError):
    """The configuration cannot be used; the message names each bad key and where to set it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IceServer(_Section):
    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("data")
    max_peers: int = Field(8, ge=1)
    max_body_kb: int = Field(64, ge=1)
    max_failed_frames: int = Field(15, ge=1, le=10_000)
    body_timeout_s: float = Field(10.0, gt=0.0, le=3600.0)
    ice_servers: list[IceServer] = []
    cors_origins: list[str] = []
    trusted_proxies: list[str] = []
    allowed_hosts: list[str] = []
    tls_cert: str = ""
    tls_key: str = ""
    connect_timeout_s: float = Field(15.0, gt=0.0, le=3600.0)
    idle_timeout_s: float = Field(5.0, gt=0.0, le=3600.0)
    max_unconnected_per_client: int = Field(2, ge=1, le=1000)
    max_connections: int = Field(0, ge=0, le=1_000_000)
    idle_connection_s: float = Field(30.0, gt=0.0, le=86400.0)
    offer_grace_s: float = Field(3.0, ge=0.0, le=3600.0)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as e:
                raise ValueError(f"{entry!r} is not an address or a CIDR network") from e
        return entries

    @model_validator(mode="after")
    def _key_needs_cert(self) -> ServerConfig:
        if self.tls_key and not self.tls_cert:
            raise ValueError("tls_key is set without tls_cert")
        return self


def port_range(text: str) -> range | None:
    """A "first-last" UDP port range (both included), or None when it is not one."""
    first, dash, last = text.strip().partition("-")
    if not dash or not first.strip().isdigit() or not last.strip().isdigit():
        return None
    low, high = int(first), int(last)
    return range(low, high + 1) if 1024 <= low <= high <= 65535 else None


class TransportConfig(_Section):
    codec: Literal["vp8", "h264"] = "vp8"
    bitrate_kbps: int = Field(1200, ge=50, le=100_000)
    min_bitrate_kbps: int = Field(400, ge=50, le=100_000)
    max_bitrate_kbps: int = Field(6000, ge=50, le=100_000)
    media_ports: str = ""  # "first-last": the UDP ports WebRTC media binds (server.live.media_ports)

    @field_validator("media_ports")
    @classmethod
    def _port_range(cls, value: str) -> str:
        if value.strip() and port_range(value) is None:
            raise ValueError(f'need "first-last" with 1024 <= first <= last <= 65535, got {value!r}')
        return value.strip()

    @property
    def media_port_range(self) -> range | None:
        """`media_ports` as ports, or None for the system's ephemeral ports."""
        return port_range(self.media_ports) if self.media_ports else None

    @model_validator(mode="after")
    def _ordered(self) -> TransportConfig:
        if not self.min_bitrate_kbps <= self.bitrate_kbps <= self.max_bitrate_kbps:
            raise ValueError(
                "need min_bitrate_kbps <= bitrate_kbps <= max_bitrate_kbps, got "
                f"{self.min_bitrate_kbps} <= {self.bitrate_kbps} <= {self.max_bitrate_kbps}"
            )
        return self


class OutputsConfig(_Section):
    jpeg_quality: int = Field(85, ge=1, le=100)
    mjpeg_fps: float = Field(15.0, ge=1.0, le=60.0)
    mjpeg_max_fps: float = Field(30.0, ge=1.0, le=60.0)
    max_viewers: int = Field(16, ge=1, le=1000)
    viewer_connect_timeout_s: float = Field(15.0, gt=0.0, le=3600.0)


class ModelConfig(_Section):
    id: str = "stabilityai/sd-turbo"
    family: Literal["auto", "sd-turbo", "sd15", "sdxl"] = "auto"
    vae: str = "auto"
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    resolution: int = Field(0, ge=0, le=2048, multiple_of=8)
    lcm_lora: str = ""
    config: str = ""


class EngineConfig(_Section):
    max_batch: int = Field(8, ge=1, le=64)
    max_wait_ms: float = Field(4.0, ge=0.0, le=1000.0)
    similarity_threshold: float = Field(0.0, ge=0.0, le=1.0)
    similarity_max_skip: int = Field(10, ge=0, le=1000)
    memory_slots: int = Field(32, ge=1, le=4096)
    prompt_cache_size: int = Field(64, ge=1)
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"
    cuda_graphs: bool = True
    warmup: bool = True
    warmup_steps: list[Steps] = []
    cpu_threads: int = Field(0, ge=0, le=256)


class LoraConfig(_Section):
    dir: str = ""
    slots: int = Field(8, ge=0, le=64)
    max_rank: int = Field(64, ge=1, le=256)
    cache_size: int = Field(4, ge=1, le=64)


class DefaultsConfig(_Section):
    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    strength: Strength = 0.5
    seed: Seed = 42
    guidance_scale: Guidance = 0.0
    num_inference_steps: Steps | None = None

    @field_validator("num_inference_steps", mode="before")
    @classmethod
    def _family_default(cls, value: Any) -> Any:
        """0 (what a TOML file or an environment variable can say for "none") is the family's default, as
        is "null" (how a `--workers` front hands its own none to its workers' environment)."""
        return None if value in (0, "0", "null") else value


class OscConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    allow: list[str] = ["127.0.0.1", "::1"]
    feedback: list[str] = []
    feedback_rate_hz: float = Field(30.0, gt=0.0, le=1000.0)
    query_port: int = Field(0, ge=0, le=65535)
    mdns: bool = False

    @field_validator("feedback")
    @classmethod
    def _targets(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            split_host_port(entry)
        return entries


def split_host_port(entry: str) -> tuple[str, int]:
    """`"host:port"` (`"[::1]:9001"` for IPv6) as (host, port); ValueError naming the entry otherwise."""
    host, sep, port = entry.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} is not host:port (a port 1-65535; [v6]:port for IPv6)")
    return host, int(port)


class SecurityConfig(_Section):
    api_token: str = ""
    rate_limit_per_s: float = Field(20.0, ge=0.0)
    rate_limit_burst: int = Field(40, ge=1)
    auth_fail_per_s: float = Field(0.1, gt=0.0)
    auth_fail_burst: int = Field(10, ge=1)


class PresetsConfig(_Section):
    default_subject: str = Field("a person", min_length=1, max_length=200)


class JobsConfig(_Section):
    max_upload_mb: float = Field(512.0, gt=0.0)
    max_duration_s: float = Field(600.0, gt=0.0)
    max_resolution: int = Field(3840, ge=16)
    max_frames: int = Field(9000, ge=1)
    keep_hours: float = Field(72.0, ge=0.0)
    timeout_s: float = Field(3600.0, ge=0.0)
    max_attempts: int = Field(3, ge=1, le=100)
    live_share: float = Field(0.25, gt=0.0, le=1.0)
    nice: int = Field(10, ge=0, le=19)
    jpeg_quality: int = Field(92, ge=1, le=100)
    video_crf: int = Field(20, ge=0, le=51)
    video_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "veryfast"


class ControlConfig(_Section):
    models: list[str] = []
    depth_model: str = "auto"

    @field_validator("models")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        from pipeline.control_names import parse_models

        parse_models(value)  # a kind that does not exist is refused at start, naming it
        return value


class RecordingsConfig(_Section):
    dir: str = ""
    max_gb: float = Field(20.0, gt=0.0)
    segment_s: float = Field(2.0, gt=0.0, le=600.0)
    queue_frames: int = Field(120, ge=1, le=10_000)
    video_crf: int = Field(20, ge=0, le=51)


ClusterRole = Literal["none", "front", "worker"]


class ClusterConfig(_Section):
    role: ClusterRole = "none"
    workers: int | Literal["auto"] = Field(0, description="local worker processes a front starts")
    redis_url: str = ""
    node_id: str = Field("", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    advertise_url: str = ""
    prefix: str = Field("stylize", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    heartbeat_s: float = Field(1.0, gt=0.0, le=60.0)
    node_ttl_s: float = Field(3.0, gt=0.0, le=600.0)
    job_claim_timeout_s: float = Field(30.0, gt=0.0, le=86_400.0)
    relay_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    worker_port: int = Field(0, ge=0, le=65535)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 64:
            raise ValueError(f'must be 0..64 or "auto", got {value}')
        return value

    @model_validator(mode="after")
    def _coherent(self) -> ClusterConfig:
        if self.workers and self.role == "none":
            self.role = "front"  # --workers N: this process fronts the workers it starts
        if self.workers and self.role == "worker":
            raise ValueError("a worker starts no workers: workers is for a front")
        if self.role == "worker" and not self.redis_url:
            raise ValueError("a worker needs redis_url (the cluster's Redis, where it registers)")
        if self.role == "front" and not self.workers and not self.redis_url:
            raise ValueError("a front without workers of its own needs redis_url (where the workers register)")
        if self.node_ttl_s <= self.heartbeat_s:
            raise ValueError(f"node_ttl_s ({self.node_ttl_s}) must be longer than heartbeat_s ({self.heartbeat_s})")
        return self

    @property
    def enabled(self) -> bool:
        """Part of a cluster: settings, events, presets and jobs live in Redis, not in this process."""
        return self.role != "none"


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file_max_mb: int = Field(10, ge=1, le=10_000)
    file_count: int = Field(5, ge=1, le=100)


class Config(_Section):
    server: ServerConfig = ServerConfig()
    transport: TransportConfig = TransportConfig()
    outputs: OutputsConfig = OutputsConfig()
    model: ModelConfig = ModelConfig()
    engine: EngineConfig = EngineConfig()
    lora: LoraConfig = LoraConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    osc: OscConfig = OscConfig()
    security: SecurityConfig = SecurityConfig()
    presets: PresetsConfig = PresetsConfig()
    jobs: JobsConfig = JobsConfig()
    control: ControlConfig = ControlConfig()
    recordings: RecordingsConfig = RecordingsConfig()
    logging: LoggingConfig = LoggingConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _workers_take_no_osc(self) -> Config:
        # Controllers talk to a front; a worker on the same box must not take (or fight over) the OSC port.
        if self.cluster.role == "worker" and self.osc.enabled:
            self.osc = self.osc.model_copy(update={"enabled": False})
        return self


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Merge the defaults file, `path`, the environment and `overrides` ({section: {key: value}}).

    Without `env`: the process environment over the `STYLIZE_...` lines of `./.env`.
    Raises `ConfigError` naming every bad key.
    """
    data = _read_toml(DEFAULT_CONFIG)
    if path is not None:
        _merge(data, _read_toml(path))
    _merge(data, _from_env(process_env() if env is None else env))
    if overrides:
        _merge(data, {section: dict(values) for section, values in overrides.items()})
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError("invalid configuration: " + "; ".join(_describe(item) for item in e.errors())) from e


def read_dotenv(path: Path) -> dict[str, str]:
    """The `STYLIZE_...` assignments of a dotenv file (`KEY=value`, `export KEY=value`, quotes, `#` comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.startswith("STYLIZE_"):
            continue  # blank lines, comments and other programs' variables
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        found[name] = value
    return found


def process_env() -> dict[str, str]:
    """The variables the server reads: `./.env`'s, then the real environment's over them."""
    return {**read_dotenv(DOTENV), **os.environ}


def token_source(path: Path | None) -> str:
    """Which place set `[security] api_token` (for the start-up log; never the token), or "" when none did."""
    if os.environ.get(TOKEN_VARIABLE):
        return f"{TOKEN_VARIABLE} in the environment"
    if read_dotenv(DOTENV).get(TOKEN_VARIABLE):
        return f"{TOKEN_VARIABLE} in {DOTENV.resolve()}"
    if path is not None and _read_toml(path).get("security", {}).get("api_token"):
        return f"[security] api_token in {path}"
    if _read_toml(DEFAULT_CONFIG).get("security", {}).get("api_token"):
        return f"[security] api_token in {DEFAULT_CONFIG}"
    return ""


def _describe(error: Any) -> str:
    """`[defaults] seed (STYLIZE_DEFAULTS_SEED): Input should be ...` for one pydantic error."""
    location = [str(part) for part in error["loc"]]
    if len(location) >= 2:
        where = f"[{location[0]}] {'.'.join(location[1:])} (STYLIZE_{location[0].upper()}_{location[1].upper()})"
    elif location and location[0] in Config.model_fields:
        where = f"[{location[0]}]"  # a rule across the section's keys
    else:
        where = ".".join(location) or "configuration"
    if error["type"] == "extra_forbidden":
        if len(location) == 1:
            return f"[{location[0]}]: not a known section{_near(location)}"
        return f"{where}: not a known key{_near(location)}"
    if error["type"] == "list_type" and isinstance(error.get("input"), str) and len(location) >= 2:
        variable = f"STYLIZE_{location[0].upper()}_{location[1].upper()}"
        return f'{where}: takes a list; in a variable, as JSON: {variable}=\'["...", "..."]\''
    return f"{where}: {error['msg']}"


def _near(location: list[str]) -> str:
    """`; did you mean port?` for a mistyped key (or section), or nothing when none is close."""
    known: list[str] = list(Config.model_fields)
    if len(location) >= 2:
        section = Config.model_fields.get(location[0])
        annotation = section.annotation if section is not None else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            known = list(annotation.model_fields)
        else:
            known = []
    near = difflib.get_close_matches(location[-1], known, n=1)
    return f"; did you mean {near[0]}?" if near else ""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for section, values in extra.items():
        base.setdefault(section, {}).update(values)


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, field_info in Config.model_fields.items():
        section_type = field_info.annotation
        assert isinstance(section_type, type) and issubclass(section_type, BaseModel)
        for key in section_type.model_fields:
            variable = f"STYLIZE_{name}_{key}".upper()
            value = env.get(variable)
            if value is not None:
                found.setdefault(name, {})[key] = _parse_env_value(variable, value)
    for variable, (section, key) in ENV_ALIASES.items():
        if variable in env:
            found.setdefault(section, {})[key] = _parse_env_value(variable, env[variable])
    return found


def _parse_env_value(variable: str, value: str) -> Any:
    """Lists and tables as JSON; scalars stay strings for pydantic to convert to the field's type."""
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{variable} holds invalid JSON ({e}): {value!r}") from e
    return value
