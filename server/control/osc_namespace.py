"""The OSC address space, described once: what each `/stylize/...` address takes and holds now.

OSC feedback and OSCQuery's LISTEN send a settings change as the messages that would have made it
(`messages`); OSCQuery serves the whole space as JSON (`namespace`, in the shape of the OSCQuery
proposal: FULL_PATH, CONTENTS, TYPE, VALUE, RANGE, ACCESS, DESCRIPTION; a node is a container or a
method, never both, and every method has a VALUE, as python-oscquery reads it). The same leaves sit under
`/stylize` (global), `/stylize/name/<name>` and `/stylize/stream/<id>` (streams are not listed: their
ids change on every reconnect).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder

from pipeline.contract import CONTROL_KINDS, MAX_CONTROL_SCALE, MAX_LORA_SCALE, MAX_LORAS_PER_ROW
from server.control.settings import SettingsChange, SettingsStore, StyleSettings, name_scope, scope_name
from server.fields import MAX_GUIDANCE, MAX_SEED, MAX_STEPS

PREFIX = "/stylize"
LORA_SCALE = "lora/scale"  # two arguments (which LoRA, its scale): not a leaf of one setting
ACCESS_NONE, ACCESS_WRITE, ACCESS_READ_WRITE = 0, 2, 3


@dataclass(frozen=True)
class Leaf:
    """One address under a scope: the setting it sets, its OSC type tag and range."""

    field: str
    osc_type: str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    part: str | None = None  # a field of a setting that is an object (`temporal`, `control`), set alone over OSC

    def value(self, settings: StyleSettings) -> Any:
        """The setting as an OSC argument: pause as 0/1, no preset as "", no target as 0."""
        value = getattr(settings, self.field)
        if self.part is not None:
            held = getattr(value, self.part)
            return held if held is not None else (0.0 if self.osc_type == "f" else 0)
        if self.field == "paused":
            return int(value)
        if self.field == "preset":
            return value or ""
        if self.field == "num_inference_steps":
            return value or 0
        return value


# OSC name under a scope -> what it sets (`server.control.osc` parses the same names).
LEAVES: dict[str, Leaf] = {
    "prompt": Leaf("prompt", "s", "what the picture becomes"),
    "prompt_b": Leaf("prompt_b", "s", "a second prompt, mixed in by blend"),
    "negative_prompt": Leaf("negative_prompt", "s", "what guidance steers away from (guidance_scale > 1)"),
    "blend": Leaf("blend", "f", "0 = prompt, 1 = prompt_b", 0.0, 1.0),
    "strength": Leaf("strength", "f", "0 = the camera untouched, 1 = fully generated", 0.0, 1.0),
    "guidance_scale": Leaf(
        "guidance_scale", "f", "0 for turbo models; above 1 doubles the model work", 0.0, MAX_GUIDANCE
    ),
    "seed": Leaf("seed", "i", "noise seed; fixed noise keeps video from flickering", 0, MAX_SEED),
    "num_inference_steps": Leaf(
        "num_inference_steps",
        "i",
        "UNet calls per frame (more detail, fewer fps); 0 = the model's default",
        1,
        MAX_STEPS,
    ),
    "pause": Leaf("paused", "i", "1 freezes the last stylized frame (T and F are taken too)", 0, 1),
    "preset": Leaf("preset", "s", "apply a style preset by id"),
    "temporal/feedback": Leaf(
        "temporal", "f", "share of the previous output in each frame's start; 0 = off", 0.0, 1.0, "feedback"
    ),
    "temporal/frames": Leaf("temporal", "i", "past frames self-attention also sees; 0 = off", 0, 4, "frames"),
    "temporal/target": Leaf(
        "temporal", "f", "a flicker figure to hold by moving feedback; 0 = none", 0.0, 100.0, "target"
    ),
    "control/kind": Leaf(
        "control", "s", "the ControlNet's control image made from each frame: canny or depth", part="kind"
    ),
    "control/scale": Leaf(
        "control",
        "f",
        "how strongly the ControlNet keeps the frame's structure; 0 = off",
        0.0,
        MAX_CONTROL_SCALE,
        "scale",
    ),
}


# Preset steps: `/stylize/preset` holds a value, so a node cannot also be their container (OSCQuery
# clients such as python-oscquery refuse a node that is both). They are listed as siblings; the older
# `/stylize/preset/next` and `/prev` still work over OSC. OSC name -> (old step name, what it does).
STEPS: dict[str, tuple[str, str]] = {"preset_next": ("next", "next"), "preset_prev": ("prev", "previous")}


def scope_address(scope: str) -> str:
    """Where a settings scope's addresses live: /stylize, /stylize/name/<name> or /stylize/stream/<id>."""
    if scope == "global":
        return PREFIX
    name = scope_name(scope)
    return f"{PREFIX}/name/{name}" if name is not None else f"{PREFIX}/stream/{scope}"


def messages(change: SettingsChange) -> dict[str, Any]:
    """The change as OSC messages (address -> argument), the values those fields hold now."""
    prefix = scope_address(change.scope)
    return {
        f"{prefix}/{osc}": leaf.value(change.settings) for osc, leaf in LEAVES.items() if leaf.field in change.changed
    }


def current_messages(settings: StyleSettings) -> dict[str, Any]:
    """Every global setting as a message: what a controller that just subscribed needs to catch up."""
    return {f"{PREFIX}/{osc}": leaf.value(settings) for osc, leaf in LEAVES.items()}


def encode(address: str, value: Any) -> bytes:
    """One OSC message with one argument (its type from the value: s, f, i, or h past 32 bits)."""
    builder = OscMessageBuilder(address=address)
    builder.add_arg(value)
    return bytes(builder.build().dgram)


def value_at(store: SettingsStore, path: str) -> Any:
    """The argument a leaf address holds now, or None for an address that holds no value."""
    parts = path.split("/")
    if parts[:2] != ["", PREFIX[1:]] or len(parts) < 3:
        return None
    scoped = parts[2] in ("name", "stream") and len(parts) >= 5
    leaf = LEAVES.get("/".join(parts[4:] if scoped else parts[2:]))
    if leaf is None:
        return None
    if not scoped:
        return leaf.value(store.global_settings)
    scope = {"name": name_scope(parts[3]), "stream": parts[3]}.get(parts[2])
    if scope is None or not store.has_stream(scope):
        return None
    return leaf.value(store.effective(scope))


def namespace(store: SettingsStore, names: list[str], preset_ids: list[str]) -> dict[str, Any]:
    """The whole address space as OSCQuery JSON: global leaves, one container per name, feedback."""
    stylize = _scope_node(PREFIX, store.global_settings, preset_ids, "global settings: every stream follows them")
    stylize["CONTENTS"]["name"] = _container(
        f"{PREFIX}/name",
        "settings by stream name (over global, under a stream's own)",
        {
            name: _scope_node(
                f"{PREFIX}/name/{name}", store.effective(name_scope(name)), preset_ids, f"streams named {name}"
            )
            for name in names
        },
    )
    stylize["CONTENTS"]["feedback"] = _container(
        f"{PREFIX}/feedback",
        "settings changes sent back as these same messages",
        {
            verb: {
                "FULL_PATH": f"{PREFIX}/feedback/{verb}",
                "TYPE": "i",
                "ACCESS": ACCESS_WRITE,
                "VALUE": [0],  # write-only: only its type (see _button_node); 0 = no port
                "RANGE": [{"MIN": 1, "MAX": 65535}],
                "DESCRIPTION": f"{verb} the sender's address, at this UDP port, to every settings change",
            }
            for verb in ("subscribe", "unsubscribe")
        },
    )
    return _container("/", "Stylize: real-time diffusion on live video", {"stylize": stylize})


def find(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The node at `path` ("/" is the root), or None."""
    node: dict[str, Any] | None = tree
    for part in [p for p in path.split("/") if p]:
        node = (node or {}).get("CONTENTS", {}).get(part)
        if node is None:
            return None
    return node


def _container(path: str, description: str, contents: dict[str, Any]) -> dict[str, Any]:
    return {"FULL_PATH": path, "ACCESS": ACCESS_NONE, "DESCRIPTION": description, "CONTENTS": contents}


def _scope_node(path: str, settings: StyleSettings, preset_ids: list[str], description: str) -> dict[str, Any]:
    contents: dict[str, Any] = {}
    for osc, leaf in LEAVES.items():
        node = _leaf_node(f"{path}/{osc}", leaf, settings, preset_ids)
        if "/" not in osc:
            contents[osc] = node
            continue
        group, part = osc.split("/", 1)  # a setting that is an object: a container of its fields
        holder = contents.setdefault(group, _container(f"{path}/{group}", f"{group} settings", {}))
        holder["CONTENTS"][part] = node
    for osc, (step, direction) in STEPS.items():
        contents[osc] = _button_node(f"{path}/{osc}", f"apply the {direction} preset ({PREFIX}/preset/{step} too)")
    worn = {"scale": _lora_scale(path)}
    contents["lora"] = _container(f"{path}/lora", "the LoRAs worn (set by name over HTTP)", worn)
    return _container(path, description, contents)


def _lora_scale(path: str) -> dict[str, Any]:
    """`lora/scale i f`: the scale of the i-th LoRA worn (0-based), write-only (a LoRA is picked by name over HTTP)."""
    return {
        "FULL_PATH": f"{path}/{LORA_SCALE}",
        "TYPE": "if",
        "ACCESS": ACCESS_WRITE,
        "VALUE": [0, 1.0],  # write-only: only its types, for clients that type a method by its VALUE
        "RANGE": [{"MIN": 0, "MAX": MAX_LORAS_PER_ROW - 1}, {"MIN": -MAX_LORA_SCALE, "MAX": MAX_LORA_SCALE}],
        "DESCRIPTION": "the scale of the LoRA worn at this index (0 first): 1 as trained, 0 not at all",
    }


def _leaf_node(path: str, leaf: Leaf, settings: StyleSettings, preset_ids: list[str]) -> dict[str, Any]:
    node: dict[str, Any] = {
        "FULL_PATH": path,
        "TYPE": leaf.osc_type,
        "ACCESS": ACCESS_READ_WRITE,
        "VALUE": [leaf.value(settings)],
        "DESCRIPTION": leaf.description,
    }
    if leaf.minimum is not None:
        node["RANGE"] = [{"MIN": leaf.minimum, "MAX": leaf.maximum}]
    if leaf.field == "preset":
        node["RANGE"] = [{"VALS": preset_ids}]
    if (leaf.field, leaf.part) == ("control", "kind"):
        node["RANGE"] = [{"VALS": list(CONTROL_KINDS)}]
    return node


def _button_node(path: str, description: str) -> dict[str, Any]:
    """A write-only method a button drives (1 on press, 0 on release: only a press acts)."""
    return {
        "FULL_PATH": path,
        "TYPE": "i",
        "ACCESS": ACCESS_WRITE,
        # Write-only: the value is never read back, but clients (python-oscquery) type a method by its
        # VALUE and refuse a method without one; 0 is the button at rest.
        "VALUE": [0],
        "RANGE": [{"MIN": 0, "MAX": 1}],
        "DESCRIPTION": description,
    }
