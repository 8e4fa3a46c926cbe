// The local camera: which devices there are, and opening one at a chosen size.

export function cameraSupported() {
  return Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

// Fill `select` with the video inputs, keeping the current choice where it still exists.
export async function listCameras(select) {
  if (!cameraSupported()) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const cameras = devices.filter((d) => d.kind === "videoinput");
  const chosen = select.value;
  select.replaceChildren(...cameras.map((d, i) => new Option(d.label || `camera ${i + 1}`, d.deviceId)));
  if (cameras.some((d) => d.deviceId === chosen)) select.value = chosen;
}

// `resolution` is "WIDTHxHEIGHT"; the camera gets as close as it can.
export async function openCamera(deviceId, resolution) {
  const [width, height] = resolution.split("x").map(Number);
  return navigator.mediaDevices.getUserMedia({
    audio: false,
    video: {
      deviceId: deviceId ? { exact: deviceId } : undefined,
      width: { ideal: width },
      height: { ideal: height },
      frameRate: { ideal: 30 },
    },
  });
}
