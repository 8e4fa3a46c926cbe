// The style controls (prompt, presets, strength, steps, temporal memory, ControlNet, seed, pause). Changes go to
// PATCH /api/settings
// (global); changes made elsewhere (OSC, HTTP, other pages) arrive as settings and move them here.
//
// The prompt goes live on Enter (or when the field loses focus), never per keystroke: an audience
// must not watch half-typed words. A typed prompt is the subject: it clears the preset (and its
// negative prompt), and a preset chosen afterwards fills its {prompt} slot with that subject.

import { api } from "./api.js";

const HOLD_MS = 1200; // a control the user just touched ignores remote values this long
const MAX_SEED = 2 ** 32 - 1;

// Sends patches one at a time; what changes while one is out is merged and sent next,
// so a dragged slider never queues up a backlog of requests.
class Patcher {
  constructor(onSettings, onError) {
    this.onSettings = onSettings;
    this.onError = onError;
    this.queued = null;
    this.busy = false;
  }

  send(patch) {
    this.queued = { ...(this.queued || {}), ...patch };
    if (!this.busy) this.#flush();
  }

  async #flush() {
    this.busy = true;
    while (this.queued) {
      const patch = this.queued;
      this.queued = null;
      try {
        this.onSettings(await api("PATCH", "/api/settings?source=page", patch));
        this.onError(null);
      } catch (error) {
        this.onError(error);
      }
    }
    this.busy = false;
  }
}

export class StyleControls {
  constructor(ui, onError) {
    this.ui = ui;
    this.onError = onError;
    this.settings = null;
    this.presets = [];
    this.touched = {};
    this.holdTimer = null;
    this.subject = null; // what the user typed: the preset's {prompt} slot is filled with it
    this.patcher = new Patcher((settings) => this.render(settings, "page"), onError);
    this.#bind();
  }

  // The server's settings: every control shows them, except one the user is busy with.
  // `source` is who changed them (osc, http, page...), when known.
  render(settings, source) {
    const wasPaused = this.settings ? this.settings.paused : false;
    this.settings = settings;
    const ui = this.ui;
    if (!this.#editingPrompt() && ui.prompt.value !== settings.prompt) ui.prompt.value = settings.prompt;
    if (!this.#held("strength")) ui.strength.value = String(settings.strength);
    if (!this.#held("seed") && document.activeElement !== ui.seed) ui.seed.value = String(settings.seed);
    if (!this.#held("steps")) ui.steps.value = settings.num_inference_steps ? String(settings.num_inference_steps) : "";
    ui.strengthValue.textContent = Number(ui.strength.value).toFixed(2);
    const temporal = settings.temporal;
    if (!this.#held("temporal")) {
      ui.feedback.value = String(temporal.feedback);
      ui.pastFrames.value = String(temporal.frames);
      if (document.activeElement !== ui.flickerTarget) ui.flickerTarget.value = temporal.target === null ? "" : String(temporal.target);
    }
    ui.feedbackValue.textContent = Number(ui.feedback.value).toFixed(2);
    if (!this.#held("control")) {
      ui.controlKind.value = settings.control.kind;
      ui.controlScale.value = String(settings.control.scale);
    }
    ui.controlScaleValue.textContent = Number(ui.controlScale.value).toFixed(2);
    ui.lorasWorn.hidden = settings.loras.length === 0;
    ui.lorasWorn.textContent = `LoRAs: ${describeLoras(settings.loras)}`;
    this.#showPreset(settings.preset);
    this.#showPaused(settings.paused, settings.paused !== wasPaused ? source : this.pausedBy);
  }

  // The ControlNet kinds the server loaded ([control] models): only those are offered; none hides the control.
  setControlKinds(kinds) {
    const ui = this.ui;
    ui.controlGroup.hidden = kinds.length === 0;
    for (const option of ui.controlKind.options) option.disabled = !kinds.includes(option.value);
  }

  setPresets(presets) {
    this.presets = presets;
    const ui = this.ui;
    ui.preset.replaceChildren(
      new Option("(none)", ""),
      ...presets.map((p) => {
        const option = new Option(p.loras && p.loras.length ? `${p.name} (${describeLoras(p.loras)})` : p.name, p.id);
        option.disabled = p.available === false;
        return option;
      }),
    );
    ui.presetChips.replaceChildren(
      ...presets.map((p) => {
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = "chip";
        chip.textContent = p.name;
        chip.dataset.preset = p.id;
        // What the look brings besides its prompt: its LoRAs and ControlNet; why it cannot be applied here.
        const brings = [p.template];
        if (p.loras && p.loras.length) brings.push(`LoRAs: ${describeLoras(p.loras)}`);
        if (p.control && p.control.scale > 0) brings.push(`structure: ${p.control.kind} ${p.control.scale}`);
        if (p.available === false) brings.push(`unavailable here: ${p.unavailable_reason}`);
        chip.title = brings.join("\n");
        chip.disabled = p.available === false;
        chip.addEventListener("click", () => this.applyPreset(p.id));
        return chip;
      }),
    );
    ui.presetChips.hidden = presets.length === 0;
    if (this.settings) this.#showPreset(this.settings.preset);
  }

  async applyPreset(id) {
    if (!id) {
      this.patcher.send({ preset: null, negative_prompt: "" });
      return;
    }
    try {
      const body = this.subject ? { prompt: this.subject } : undefined;
      const applied = await api("POST", `/api/presets/${encodeURIComponent(id)}/apply`, body);
      this.subject = applied.subject;
      this.onError(null);
      this.render(applied.settings, "page");
    } catch (error) {
      this.onError(error);
    }
  }

  #bind() {
    const ui = this.ui;
    ui.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter") this.#sendPrompt();
      else if (event.key === "Escape" && this.settings) ui.prompt.value = this.settings.prompt; // never mind
    });
    ui.prompt.addEventListener("blur", () => this.#sendPrompt());
    ui.pause.addEventListener("click", () => {
      const paused = !(this.settings && this.settings.paused);
      this.#showPaused(paused, "page");
      this.patcher.send({ paused });
    });
    ui.strength.addEventListener("input", () => {
      this.#touch("strength");
      ui.strengthValue.textContent = Number(ui.strength.value).toFixed(2);
      this.patcher.send({ strength: Number(ui.strength.value) });
    });
    // `temporal` is set as a whole: all of its fields go with every change of one.
    ui.feedback.addEventListener("input", () => {
      ui.feedbackValue.textContent = Number(ui.feedback.value).toFixed(2);
      this.#sendTemporal();
    });
    ui.flickerTarget.addEventListener("change", () => this.#sendTemporal());
    // `control` is set as a whole too.
    ui.controlScale.addEventListener("input", () => {
      ui.controlScaleValue.textContent = Number(ui.controlScale.value).toFixed(2);
      this.#sendControl();
    });
    ui.controlKind.addEventListener("change", () => this.#sendControl());
    ui.pastFrames.addEventListener("change", () => this.#sendTemporal());
    ui.steps.addEventListener("change", () => {
      this.#touch("steps");
      // "" is the model family's default (null), else 1..4 model calls per frame.
      this.patcher.send({ num_inference_steps: ui.steps.value ? Number(ui.steps.value) : null });
    });
    ui.seed.addEventListener("change", () => {
      const seed = Number(ui.seed.value);
      if (!Number.isInteger(seed) || seed < 0 || seed > MAX_SEED) {
        this.onError(new Error(`seed must be a whole number from 0 to ${MAX_SEED}`));
        return;
      }
      this.#touch("seed");
      this.patcher.send({ seed });
    });
    ui.dice.addEventListener("click", () => {
      const seed = crypto.getRandomValues(new Uint32Array(1))[0];
      ui.seed.value = String(seed);
      this.#touch("seed");
      this.patcher.send({ seed });
    });
    ui.preset.addEventListener("change", () => this.applyPreset(ui.preset.value));
  }

  #sendTemporal() {
    const ui = this.ui;
    const target = ui.flickerTarget.value === "" ? null : Number(ui.flickerTarget.value);
    this.#touch("temporal");
    const frames = Number(ui.pastFrames.value);
    this.patcher.send({ temporal: { feedback: Number(ui.feedback.value), frames, target } });
  }

  #sendControl() {
    const ui = this.ui;
    this.#touch("control");
    this.patcher.send({ control: { kind: ui.controlKind.value, scale: Number(ui.controlScale.value) } });
  }

  #sendPrompt() {
    const prompt = this.ui.prompt.value;
    if (this.settings && prompt === this.settings.prompt) return;
    this.#touch("prompt");
    this.subject = prompt.trim() || null;
    this.patcher.send({ prompt, preset: null, negative_prompt: "" });
  }

  // Typing not yet sent: remote changes must not overwrite it.
  #editingPrompt() {
    const ui = this.ui;
    const dirty = this.settings && ui.prompt.value !== this.settings.prompt;
    return this.#held("prompt") || (document.activeElement === ui.prompt && dirty);
  }

  #showPaused(paused, by) {
    const ui = this.ui;
    this.pausedBy = paused ? by : undefined;
    ui.pause.textContent = paused ? "Resume" : "Pause";
    ui.pause.setAttribute("aria-pressed", String(paused));
    ui.pausedBadge.hidden = !paused;
    ui.pausedBadge.textContent = by ? `paused (by ${by === "datachannel" ? "page" : by})` : "paused";
  }

  #touch(name) {
    this.touched[name] = performance.now();
    // When the hold runs out, show whatever the server said meanwhile.
    clearTimeout(this.holdTimer);
    this.holdTimer = setTimeout(() => this.settings && this.render(this.settings), HOLD_MS + 50);
  }

  #held(name) {
    const at = this.touched[name];
    return at !== undefined && performance.now() - at < HOLD_MS;
  }

  #showPreset(id) {
    const ui = this.ui;
    const value = id || "";
    if (value && ![...ui.preset.options].some((o) => o.value === value)) ui.preset.add(new Option(value, value));
    ui.preset.value = value;
    for (const chip of ui.presetChips.children) chip.classList.toggle("active", chip.dataset.preset === value);
  }
}

// "ink.safetensors 0.80, org/style 1.00": the LoRAs a look wears, by name and scale.
function describeLoras(loras) {
  return loras.map((lora) => `${lora.id} ${Number(lora.scale).toFixed(2)}`).join(", ");
}
