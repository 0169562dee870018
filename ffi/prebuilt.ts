// The prebuilt libraries served beside this module, pinned by version and SHA-256. A checkout
// carries none; scripts/dist.sh writes the real values into the copy it puts in dist/, so the
// checksum is part of the module's source (and of a Deno lock file that pins it).

/** One platform's prebuilt library: its file name under lib/ and its SHA-256 (hex). */
export interface PrebuiltFile {
  readonly file: string;
  readonly sha256: string;
}

/** The prebuilt libraries of one release: their version, and a file per platform. */
export interface Prebuilt {
  /** `lsm_version()` of the libraries; "" when there are none. */
  readonly version: string;
  /** By platform, `${Deno.build.os}-${Deno.build.arch}` ("linux-x86_64", "linux-aarch64"). */
  readonly files: Readonly<Record<string, PrebuiltFile>>;
}

/** The libraries this copy serves under lib/: none in a checkout (scripts/dist.sh pins its own). */
export const PREBUILT: Prebuilt = { version: "", files: {} };
