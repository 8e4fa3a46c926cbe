// The stream's name (?name=, default "default") and the stable addresses of its outputs, each with a
// copy button: the same name after every reconnect and restart, so OBS or a projector can keep them.

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

// The name from the address bar; a bad one is reported through onError and "default" used instead.
export function streamName(onError) {
  const asked = new URLSearchParams(location.search).get("name");
  if (asked === null || asked === "") return "default";
  if (NAME.test(asked) && asked !== "latest") return asked;
  onError(new Error(`?name=${asked} is not a stream name (letters, digits, . _ -; not "latest"): streaming as "default"`));
  return "default";
}

export class OutputLinks {
  // label: where the name is shown; list: the <ul> the links go in.
  constructor({ name, label, list }) {
    this.name = name;
    label.textContent = name;
    const base = `${location.origin}/api/outputs/${encodeURIComponent(name)}`;
    this.urls = {
      "full-screen player (WHEP)": `${location.origin}/view/${encodeURIComponent(name)}`,
      "MJPEG (OBS browser source, Resolume)": `${base}/mjpeg`,
      "snapshot (JPEG)": `${base}/snapshot.jpg`,
      "WHEP (players, OBS WHEP source)": `${base}/whep`,
      "WHIP (publish from OBS)": `${location.origin}/api/whip/${encodeURIComponent(name)}`,
      "OSC prefix for this name": `/stylize/name/${name}/`,
    };
    list.replaceChildren(...Object.entries(this.urls).map(([what, url]) => this.#item(what, url)));
  }

  #item(what, url) {
    const item = document.createElement("li");
    const text = document.createElement("code");
    text.textContent = url;
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "copy";
    copy.title = `copy: ${what}`;
    copy.addEventListener("click", () => copyText(url, text, copy));
    item.append(`${what}: `, text, " ", copy);
    return item;
  }
}

// The clipboard where the page may use it (https or localhost); else the text is selected to copy by hand.
async function copyText(url, text, button) {
  try {
    await navigator.clipboard.writeText(url);
    button.textContent = "copied";
    setTimeout(() => (button.textContent = "copy"), 1500);
  } catch {
    const range = document.createRange();
    range.selectNodeContents(text);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
}
