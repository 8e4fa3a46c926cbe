// This page's name's own overrides (GET/PATCH /api/outputs/{name}/settings), shown and editable here.
// A name's override beats the global settings the page's controls write, so without this panel a
// prompt saved for "stage" silently wins over the prompt typed on /?name=stage. Each override is a
// row with its value, Save and Clear; "add" sets one more field for this name only.

import { api } from "./api.js";

export class NameOverrides {
  // name: this page's stream name · section, list, field, value, add: the elements · onChange(named):
  // told the name's settings after every read, so the prompt field can say an override wins.
  constructor({ name, section, list, field, value, add, onError, onChange }) {
    this.name = name;
    this.path = `/api/outputs/${encodeURIComponent(name)}/settings`;
    this.section = section;
    this.list = list;
    this.field = field;
    this.value = value;
    this.onError = onError;
    this.onChange = onChange;
    this.named = null;
    section.querySelector("h2").textContent = `Overrides for ${name}`;
    field.addEventListener("change", () => this.#fitValueInput());
    add.addEventListener("click", () => this.#save(field.value, this.#read(field.value, this.value)).catch(onError));
  }

  async refresh() {
    this.#render(await api("GET", this.path));
  }

  onEvent(event) {
    if (event.type === "settings" && event.scope === `name:${this.name}`) this.refresh().catch(this.onError);
  }

  #render(named) {
    this.named = named;
    const fields = Object.keys(named.settings);
    this.list.replaceChildren(...Object.entries(named.overrides).map(([key, value]) => this.#row(key, value)));
    const free = fields.filter((key) => !(key in named.overrides));
    const chosen = free.includes(this.field.value) ? this.field.value : free[0];
    this.field.replaceChildren(...free.map((key) => new Option(key, key, false, key === chosen)));
    this.#fitValueInput();
    this.list.hidden = Object.keys(named.overrides).length === 0;
    this.onChange(named);
  }

  #row(key, value) {
    const item = document.createElement("li");
    item.dataset.field = key;
    const label = document.createElement("label");
    label.textContent = `${key} `;
    const input = this.#input(key, value);
    label.append(input);
    const save = button("Save", `save ${key} for ${this.name}`, () =>
      this.#save(key, this.#read(key, input)).catch(this.onError),
    );
    const clear = button("Clear", `${key} follows the global settings again`, () =>
      this.#save(key, null).catch(this.onError),
    );
    item.append(label, save, clear);
    return item;
  }

  // An input that fits the field's type, read off the name's effective settings.
  #input(key, value) {
    const kind = typeof this.named.settings[key];
    const input = document.createElement("input");
    if (kind === "boolean") {
      input.type = "checkbox";
      input.checked = value === true;
    } else {
      input.type = kind === "number" ? "number" : "text";
      if (kind === "number") input.step = "any";
      input.value = value === null ? "" : String(value);
    }
    return input;
  }

  #fitValueInput() {
    const key = this.field.value;
    if (!key) return;
    const fresh = this.#input(key, this.named.settings[key]);
    fresh.id = this.value.id;
    this.value.replaceWith(fresh);
    this.value = fresh;
  }

  #read(key, input) {
    const kind = typeof this.named.settings[key];
    if (kind === "boolean") return input.checked;
    if (kind === "number") return Number(input.value);
    return input.value === "" && this.named.settings[key] === null ? null : input.value; // "" leaves a nullable field unset
  }

  async #save(key, value) {
    this.#render(await api("PATCH", this.path, { [key]: value }));
    this.onError(null);
  }
}

function button(text, title, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.title = title;
  element.addEventListener("click", onClick);
  return element;
}
