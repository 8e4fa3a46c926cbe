// The API token of a server with [security] api_token. Open a page once as /?token=TOKEN: the token
// is kept in this browser's storage and taken off the address bar (so it stays out of history,
// bookmarks and screenshots); /?token= with nothing after it forgets it.

const KEY = "stylize-token";

function take() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl === null) {
    try {
      return localStorage.getItem(KEY);
    } catch {
      return null;
    }
  }
  try {
    if (fromUrl) localStorage.setItem(KEY, fromUrl);
    else localStorage.removeItem(KEY);
  } catch {
    // private mode: use it for this visit only
  }
  url.searchParams.delete("token");
  window.history.replaceState(window.history.state, "", `${url.pathname}${url.search}${url.hash}`);
  return fromUrl || null;
}

export const token = take();

// Headers for fetch(): every API call carries the token, reads included.
export function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// For what a browser cannot give headers to: a WebSocket, an <img> showing MJPEG.
export function withToken(path) {
  if (!token) return path;
  return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}
