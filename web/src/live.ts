// The job's live websocket (/api/v1/jobs/{id}/live): JSON text messages for progress, binary ones for images.
// The token goes in the first message, never in the URL. A binary message is a 4-byte little-endian header
// length n, n bytes of JSON header (padded so the pixels start at a multiple of 4), then float32 pixels.

export interface ImageHeader {
  type: 'image';
  name: string;
  scan: string;
  shape: [number, number];
  min: number | null;
  max: number | null;
  part: string;
  time: number;
  seq: number;
  source_shape?: number[];
}

export interface LiveImage {
  header: ImageHeader;
  pixels: Float32Array;
}

export type LiveMessage = { type: string; [key: string]: unknown };

export interface LiveHandlers {
  message: (message: LiveMessage) => void;
  image: (image: LiveImage) => void;
  closed: (code: number, reason: string) => void;
}

export function decodeImage(buffer: ArrayBuffer): LiveImage {
  const length = new DataView(buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length))) as ImageHeader;
  return { header, pixels: new Float32Array(buffer, 4 + length, header.shape[0] * header.shape[1]) };
}

/** Open the live channel of ``jobId``; returns a function that closes it. */
export function openLive(jobId: string, token: string, handlers: LiveHandlers): () => void {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/api/v1/jobs/${encodeURIComponent(jobId)}/live`);
  socket.binaryType = 'arraybuffer';
  let closing = false;
  socket.onopen = () => socket.send(JSON.stringify({ token }));
  socket.onmessage = (event: MessageEvent<string | ArrayBuffer>) => {
    if (typeof event.data === 'string') handlers.message(JSON.parse(event.data) as LiveMessage);
    else handlers.image(decodeImage(event.data));
  };
  socket.onclose = (event) => {
    if (!closing) handlers.closed(event.code, event.reason);
  };
  return () => {
    closing = true;
    socket.close(1000);
  };
}

// -- colour ---------------------------------------------------------------------------------------------------------

// viridis at nine stops (perceptually uniform, readable by colour-blind people), interpolated to 256 entries
const STOPS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

export const VIRIDIS: Uint8ClampedArray = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i += 1) {
    const x = (i / 255) * (STOPS.length - 1);
    const k = Math.min(Math.floor(x), STOPS.length - 2);
    const f = x - k;
    for (let c = 0; c < 3; c += 1) lut[i * 3 + c] = STOPS[k][c] + f * (STOPS[k + 1][c] - STOPS[k][c]);
  }
  return lut;
})();

/** Fill ``out`` (RGBA) with ``pixels`` mapped through viridis between ``low`` and ``high``; NaN is grey. */
export function colour(pixels: Float32Array, low: number, high: number, out: Uint8ClampedArray): void {
  const scale = high > low ? 255 / (high - low) : 0;
  for (let i = 0; i < pixels.length; i += 1) {
    const value = pixels[i];
    const o = i * 4;
    if (Number.isNaN(value)) {
      out[o] = out[o + 1] = out[o + 2] = 128;
    } else {
      const k = Math.max(0, Math.min(255, Math.round((value - low) * scale))) * 3;
      out[o] = VIRIDIS[k];
      out[o + 1] = VIRIDIS[k + 1];
      out[o + 2] = VIRIDIS[k + 2];
    }
    out[o + 3] = 255;
  }
}
