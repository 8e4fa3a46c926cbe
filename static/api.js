// The one fetch wrapper every page module uses: JSON in and out, 4xx/5xx thrown as readable errors.
export async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = data.detail ? `: ${typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)}` : "";
    throw new Error(`${data.error || response.statusText}${detail} (${response.status})`);
  }
  return data;
}
