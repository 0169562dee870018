// The content checksum of a safetensors file (CHECKSUM_KEY in format.ts): SHA-256 over the
// header's entries and the data, which refuses a file altered after it was written.

import { BLOCK, CHECKSUM_KEY } from "./format.ts";

// Order by code point (as UTF-8 bytes and Python's str compare), not by UTF-16 unit.
function byCodePoint(a: string, b: string): number {
  const x = [...a], y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0)! - y[i].codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The checksum's first part: the header's entries, the checksum itself left out. */
export function checksumHead(
  metadata: Record<string, string>,
  tensors: [string, { dtype: string; shape: number[] }][],
): Uint8Array {
  const meta = Object.entries(metadata).filter(([k]) => k !== CHECKSUM_KEY)
    .sort(([a], [b]) => byCodePoint(a, b));
  const list = tensors.map(([name, t]) => [name, t.dtype, t.shape])
    .sort(([a], [b]) => byCodePoint(a as string, b as string));
  return new TextEncoder().encode(JSON.stringify([meta, list]));
}

/**
 * Each block's write or read here, while the previous block's digest runs off this thread: the
 * SHA-256 of the checksum, when `hash`, in the blocks of its definition.
 */
export async function blockwise(
  bytes: Uint8Array,
  io: (block: Uint8Array) => void,
  hash: boolean,
): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  let pending: Promise<Uint8Array> | undefined;
  for (let p = 0; p < bytes.length; p += BLOCK) {
    const block = bytes.subarray(p, Math.min(p + BLOCK, bytes.length));
    io(block);
    if (pending) out.push(await pending);
    pending = hash ? sha256(block) : undefined;
  }
  if (pending) out.push(await pending);
  return out;
}

/** The checksum's 64 hex digits: the header's part, then each tensor's block digests by name. */
export async function checksum(
  head: Uint8Array,
  digests: Map<string, Uint8Array[]>,
): Promise<string> {
  const names = [...digests.keys()].sort(byCodePoint);
  const parts = [head, ...names.flatMap((n) => digests.get(n)!)];
  const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return hex(await sha256(all));
}
