// Prompt autocomplete from /api/suggestions: works on the fragment after the last comma, and
// choosing a suggestion keeps what came before it.

import { api } from "./api.js";

const DEBOUNCE_MS = 150;
const MIN_FRAGMENT = 2;

export function attachAutocomplete(input) {
  const list = document.createElement("datalist");
  list.id = `${input.id}-suggestions`;
  input.after(list);
  input.setAttribute("list", list.id);
  let timer = null;
  let asked = 0;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const value = input.value;
      const cut = value.lastIndexOf(",");
      const head = cut < 0 ? "" : `${value.slice(0, cut + 1).trimEnd()} `;
      const fragment = value.slice(cut + 1).trim();
      const ticket = ++asked;
      if (fragment.length < MIN_FRAGMENT) {
        list.replaceChildren();
        return;
      }
      try {
        const query = new URLSearchParams({ query: fragment, limit: "8" });
        const { suggestions } = await api("GET", `/api/suggestions/autocomplete?${query}`);
        if (ticket !== asked) return; // a newer keystroke asked since
        list.replaceChildren(
          ...suggestions.map((s) => {
            const option = new Option(s.text, head + s.text);
            option.label = `${s.text} · ${s.category}`;
            return option;
          }),
        );
      } catch {
        list.replaceChildren(); // suggestions are a convenience; typing goes on without them
      }
    }, DEBOUNCE_MS);
  });
}
