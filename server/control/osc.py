"""OSC control over UDP on the server's own event loop.

Addresses (the same under `/stylize/stream/<id>/...` for one stream, `/stylize/name/<name>/...` for a name;
`/stylize/feedback/subscribe i` is `server.control.osc_feedback`'s):
`/stylize/prompt s`, `/stylize/prompt_b s`, `/stylize/negative_prompt s`, `/stylize/blend f`,
`/stylize/strength f`, `/stylize/guidance_scale f`, `/stylize/seed i`, `/stylize/num_inference_steps i` (1..4),
`/stylize/pause T|F|0|1`,
`/stylize/preset s`, `/stylize/preset/next`, `/stylize/preset/prev` (also `/stylize/preset_next`
and `/stylize/preset_prev`, as OSCQuery lists them; with no argument, or a button's 1 on press and
0 on release: only a press steps), `/stylize/temporal/feedback f`, `/stylize/temporal/frames i`,
`/stylize/temporal/target f` (each sets one field of `temporal`, keeping the others; a target of 0
is none), `/stylize/control/kind s`, `/stylize/control/scale f` (each one field of `control`),
`/stylize/lora/scale i f` (the scale of the scope's i-th LoRA, 0-based; LoRAs are picked by name over HTTP).
Ints pass where floats are expected; 0/1 floats and ints pass where an on/off is expected (buttons
and toggles send floats). Anything malformed,
out of range, unknown or from a source not on the allow-list is dropped, logged once per address
and counted by reason; nothing raises into the loop. Datagrams are taken apart by
`osc_datagram.split_datagram` (bounded in size, depth and count) before python-osc reads a single
message's arguments; python-osc's own bundle parser is never used. Bundles are applied as they
arrive (their time tags are ignored: late is worse than early here).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, get_args

from pydantic import ValidationError
from pythonosc.osc_message import OscMessage

from server.config import OscConfig, address_in, networks
from server.control.osc_datagram import DatagramRejected, FramingReason, split_datagram
from server.control.osc_namespace import LEAVES, LORA_SCALE, PREFIX, STEPS, Leaf
from server.control.presets import PresetUnavailableError
from server.control.settings import SettingsPatch, SettingsStore, UnknownStreamError

logger = logging.getLogger(__name__)

# OSC name -> settings field, for the addresses that set one field from one argument: the namespace's
# leaves (one table for what is parsed here, fed back and listed by OSCQuery), the preset aside.
FIELDS = {osc: leaf.field for osc, leaf in LEAVES.items() if osc != "preset"}
FLOAT_FIELDS = {leaf.field for leaf in LEAVES.values() if leaf.osc_type == "f" and leaf.part is None}
# Integers a controller may send as floats (faders and toggles send floats).
INT_FIELDS = {
    leaf.field for leaf in LEAVES.values() if leaf.osc_type == "i" and leaf.field != "paused" and leaf.part is None
}
# Drops are logged once per address; a sender spraying random addresses must not grow this forever.
LOGGED_ADDRESSES = 256

# Why a message was dropped (the `reason` label of stylize_osc_rejected_total): a sender off the
# allow-list, the datagram's framing (`osc_datagram`), an address nobody serves, an argument of the
# wrong count, type or range, or a preset that cannot be applied.
DropReason = Literal[FramingReason, "source", "address", "value", "preset", "internal"]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)


class PresetControl(Protocol):
    """What OSC needs from the presets feature (`server.control.presets.PresetLibrary`)."""

    def apply(self, preset_id: str, subject: str | None = None, stream_id: str | None = None) -> Awaitable[object]: ...

    def step(self, direction: int, stream_id: str | None = None) -> Awaitable[object]: ...


class FeedbackControl(Protocol):
    """What OSC needs from feedback (`server.control.osc_feedback.OscFeedback`)."""

    def handle(self, name: str, args: list[Any]) -> bool: ...


class RecordControl(Protocol):
    """What OSC needs from recordings: start (True) or stop (False) recording a name; either is a
    no-op when the name already is (or is not) being recorded, as a toggle sends its state again."""

    def __call__(self, name: str, on: bool) -> Awaitable[object]: ...


class OscRejected(Exception):
    """A message that cannot be applied; the text says why, `reason` is the counter label."""

    def __init__(self, message: str, reason: DropReason = "value") -> None:
        super().__init__(message)
        self.reason: DropReason = reason


class OscListener(asyncio.DatagramProtocol):
    def __init__(
        self,
        config: OscConfig,
        settings: SettingsStore,
        presets: PresetControl | None = None,
        on_reject: Callable[[DropReason], None] | None = None,
    ) -> None:
        self._allow = networks(config.allow)
        self._settings = settings
        self._presets = presets
        self._on_reject = on_reject
        self._logged: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.rejected = 0
        self.port = 0  # the UDP port bound, known once listening
        self.sender: tuple[str, int] | None = None  # the source of the datagram being applied
        self.feedback: FeedbackControl | None = None  # /stylize/feedback/(un)subscribe, when set
        self.record: RecordControl | None = None  # /stylize/name/<name>/record, where recordings are kept

    # -- asyncio.DatagramProtocol --------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.sender = (str(addr[0]), int(addr[1]))
        host = str(addr[0])
        if not self._allowed(host):
            self._reject(f"source {host}", "source", "source not on the allow-list")
            return
        try:
            elements = split_datagram(data)
        except DatagramRejected as e:
            self._reject(f"datagram from {host}", e.reason, str(e))
            return
        for element in elements:
            try:
                message = OscMessage(element)
                address, args = message.address, list(message.params)
            except Exception as e:  # python-osc raises ParseError, ValueError, IndexError, UnicodeError ...
                self._reject(f"datagram from {host}", "malformed", f"unparseable message ({e!r})")
                continue
            try:
                self.handle(address, args)
            except OscRejected as e:
                self._reject(address, e.reason, str(e))
            except Exception:
                logger.exception("OSC %s failed", address)
                self._reject(address, "internal", "failed")

    def error_received(self, exc: Exception) -> None:
        logger.warning("OSC socket error: %s", exc)

    # -- dispatch ------------------------------------------------------------------------------

    def handle(self, address: str, args: list[Any]) -> None:
        parts = address.split("/")
        if parts[:2] != ["", PREFIX[1:]]:
            raise OscRejected("unknown address", "address")
        rest = parts[2:]
        stream_id: str | None = None
        if rest[:1] == ["stream"]:
            if len(rest) < 3 or not rest[1]:
                raise OscRejected("stream address needs /stylize/stream/<id>/<name>", "address")
            stream_id = rest[1]
            if not self._settings.has_stream(stream_id):
                raise OscRejected(f"unknown stream {stream_id!r}", "address")
            rest = rest[2:]
        elif rest[:1] == ["name"] and rest[2:] == ["record"]:
            self._record(rest[1], args)
            return
        elif rest[:1] == ["name"]:
            # A name's overrides are a settings scope of their own (`name:<name>`), served like a stream's.
            stream_id = self._settings.scope_of_name(rest[1]) if len(rest) >= 3 else None
            if stream_id is None:
                raise OscRejected("name address needs /stylize/name/<name>/<setting>, a name a stream can take")
            rest = rest[2:]
        name = "/".join(rest)
        if stream_id is None and self.feedback is not None and self.feedback.handle(name, args):
            self.accepted += 1
            return
        if name in STEPS:
            name = f"preset/{STEPS[name][0]}"  # the name OSCQuery lists, for the older address
        if name in ("preset", "preset/next", "preset/prev"):
            self._preset(name, args, stream_id)
            return
        if name == LORA_SCALE:
            self._apply(self._lora_scale(args, stream_id), stream_id)
            return
        field = FIELDS.get(name)
        if field is None:
            raise OscRejected("unknown address", "address")
        if len(args) != 1:
            raise OscRejected(f"expected one argument, got {len(args)}")
        if args[0] is None:
            raise OscRejected(f"{name} takes a value, got nil")
        leaf = LEAVES[name]
        patch = self._patch(field, args[0]) if leaf.part is None else self._patch_part(leaf, args[0], stream_id)
        self._apply(patch, stream_id)

    def _apply(self, patch: SettingsPatch, stream_id: str | None) -> None:
        try:
            if stream_id is None:
                self._settings.update_global(patch, "osc")
            else:
                self._settings.update_stream(stream_id, patch, "osc")
        except UnknownStreamError as e:
            raise OscRejected(f"unknown stream {stream_id!r}", "address") from e
        self.accepted += 1

    def _lora_scale(self, args: list[Any], stream_id: str | None) -> SettingsPatch:
        """`lora/scale i f`: the scope's LoRAs now, with the i-th one's scale changed (no new LoRA comes
        this way: picking one is a read the HTTP API checks first)."""
        if len(args) != 2 or isinstance(args[0], bool) or not isinstance(args[0], int | float):
            raise OscRejected(f"{LORA_SCALE} takes an index and a scale, got {args!r}")
        index, scale = args
        settings = self._settings.global_settings if stream_id is None else self._settings.effective(stream_id)
        loras = [lora.model_dump() for lora in settings.loras]
        if not float(index).is_integer() or not 0 <= int(index) < len(loras):
            raise OscRejected(f"{LORA_SCALE}: no LoRA at index {index!r} (it wears {len(loras)})")
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise OscRejected(f"{LORA_SCALE} takes a number for the scale, got {scale!r}")
        loras[int(index)]["scale"] = round(float(scale), 6)  # OSC floats are 32-bit
        try:
            return SettingsPatch.model_validate({"loras": loras})
        except ValidationError as e:
            raise OscRejected(f"{LORA_SCALE} {index} {scale!r}: {e.errors(include_url=False)[0]['msg']}") from e

    @staticmethod
    def _patch(field: str, value: Any) -> SettingsPatch:
        if field in FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif field in FLOAT_FIELDS and isinstance(value, float):
            # OSC floats are 32-bit: 0.3 arrives as 0.30000001192...; six decimals is what was meant.
            value = round(value, 6)
        elif field in INT_FIELDS and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif field == "paused":
            value = _switch(value, "pause")
        try:
            return SettingsPatch.model_validate({field: value})
        except ValidationError as e:
            problem = e.errors(include_url=False)[0]["msg"]
            raise OscRejected(f"{field}={value!r}: {problem}") from e

    def _patch_part(self, leaf: Leaf, value: Any, stream_id: str | None) -> SettingsPatch:
        """One field of an object setting: the scope's object now, with that field changed."""
        assert leaf.part is not None
        settings = self._settings.global_settings if stream_id is None else self._settings.effective(stream_id)
        whole = getattr(settings, leaf.field).model_dump()
        if leaf.osc_type == "s":
            if not isinstance(value, str):
                raise OscRejected(f"{leaf.field}/{leaf.part} takes a string, got {value!r}")
            whole[leaf.part] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise OscRejected(f"{leaf.field}/{leaf.part} takes a number, got {value!r}")
            number: float | int = round(float(value), 6)  # OSC floats are 32-bit
            if leaf.osc_type == "i" and float(number).is_integer():
                number = int(number)
            whole[leaf.part] = None if leaf.part == "target" and number == 0.0 else number
        try:
            return SettingsPatch.model_validate({leaf.field: whole})
        except ValidationError as e:
            problem = e.errors(include_url=False)[0]["msg"]
            raise OscRejected(f"{leaf.field}/{leaf.part}={value!r}: {problem}") from e

    def _preset(self, name: str, args: list[Any], stream_id: str | None) -> None:
        presets = self._presets
        if presets is None:
            raise OscRejected("presets are not available", "preset")
        if name == "preset":
            if len(args) != 1 or not isinstance(args[0], str):
                raise OscRejected("/preset takes one string")
            work = presets.apply(args[0], stream_id=stream_id)
        else:
            if len(args) > 1:
                raise OscRejected(f"{name} takes no argument or one (a button's 1 or 0)")
            # Buttons send 1 on press and 0 on release: only the press steps.
            if args and not _switch(args[0], name):
                self.accepted += 1
                return
            work = presets.step(1 if name.endswith("next") else -1, stream_id=stream_id)
        task = asyncio.ensure_future(self._finish(name, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, name: str, args: list[Any]) -> None:
        if self.record is None:
            raise OscRejected("recordings are not kept here", "address")
        if self._settings.scope_of_name(name) is None:
            raise OscRejected(f"not a name a stream can take: {name!r}")
        if len(args) != 1:
            raise OscRejected(f"record takes one argument (T, F, 0 or 1), got {len(args)}")
        work = self.record(name, _switch(args[0], "record"))
        task = asyncio.ensure_future(self._finish(f"{PREFIX}/name/{name}/record", work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, address: str, work: Awaitable[object]) -> None:
        try:
            await work
            self.accepted += 1
        except LookupError as e:
            self._reject(address, "preset", f"unknown preset ({e})")
        except PresetUnavailableError as e:  # its LoRA or ControlNet cannot be had here
            self._reject(address, "preset", str(e))
        except OSError as e:  # a recording refused: the recordings' disk share is full
            self._reject(address, "value", str(e))
        except Exception:
            logger.exception("OSC %s failed", address)
            self._reject(address, "internal", "failed")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- helpers -------------------------------------------------------------------------------

    def allows(self, host: str) -> bool:
        """`host` is on `[osc] allow` (OSCQuery answers the same senders)."""
        return self._allowed(host)

    def _allowed(self, host: str) -> bool:
        return address_in(host, self._allow)

    def _reject(self, address: str, reason: DropReason, text: str) -> None:
        self.rejected += 1
        if self._on_reject is not None:
            self._on_reject(reason)
        if address in self._logged or len(self._logged) > LOGGED_ADDRESSES:
            return
        self._logged.add(address)
        if len(self._logged) > LOGGED_ADDRESSES:
            logger.warning("OSC drops from more than %d addresses: no longer logged, still counted", LOGGED_ADDRESSES)
        else:
            logger.warning(
                "OSC message dropped address=%s reason=%s: %s (logged once per address)", address, reason, text
            )


def _switch(value: Any, name: str) -> bool:
    """An on/off argument as controllers send it: T/F, or 0/1 as an int or a float (buttons, toggles)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise OscRejected(f"{name} takes T, F, 0 or 1, got {value!r}")


async def start_osc(
    config: OscConfig,
    settings: SettingsStore,
    presets: PresetControl | None = None,
    on_reject: Callable[[DropReason], None] | None = None,
) -> tuple[asyncio.DatagramTransport, OscListener]:
    loop = asyncio.get_running_loop()
    listener = OscListener(config, settings, presets, on_reject)
    transport, _ = await loop.create_datagram_endpoint(lambda: listener, local_addr=(config.host, config.port))
    host, listener.port = transport.get_extra_info("sockname")[:2]
    logger.info("OSC listening on udp %s:%d", host, listener.port)
    return transport, listener
