/**
 * Finding and opening liblsoftmax. The library is taken from, in order: an explicit path, the
 * `LSOFTMAX_LIB` environment variable, then `build/liblsoftmax.so` beside `mod.ts` when the
 * module is a local file. Every failure says where it looked and how to build the library.
 *
 * @example
 * ```ts
 * import { loadLibrary } from "./library.ts";
 * const lib = loadLibrary();
 * console.log(lib.path, lib.version);
 * ```
 * @module
 */

import { ABI_VERSION, type Symbols, symbols } from "./symbols.ts";

/** The opened library. */
export interface Library {
  /** The path it was opened from. */
  readonly path: string;
  /** Its version string (`lsm_version`). */
  readonly version: string;
  /** The raw C functions. */
  readonly symbols: Symbols;
}

/** The environment variable naming the library. */
export const LIBRARY_ENV = "LSOFTMAX_LIB";

const BUILD_HINT = "Build it with `make` in a checkout of the module " +
  `(it writes build/liblsoftmax.so), then point ${LIBRARY_ENV} at it.`;

let loaded: Library | undefined;

/** Reads a NUL-terminated C string; null reads as "". */
export function cString(pointer: Deno.PointerValue): string {
  return pointer === null ? "" : Deno.UnsafePointerView.getCString(pointer);
}

function readEnv(): { value?: string; note: string } {
  try {
    const value = Deno.env.get(LIBRARY_ENV);
    return value ? { value, note: `${LIBRARY_ENV}=${value}` } : { note: `${LIBRARY_ENV} (unset)` };
  } catch {
    return { note: `${LIBRARY_ENV} (not readable: run with --allow-env=${LIBRARY_ENV})` };
  }
}

/** Where the library is looked for, in order, with the first usable path. */
export function locateLibrary(explicit?: string): { path?: string; looked: string[] } {
  const looked: string[] = [];
  if (explicit !== undefined) return { path: explicit, looked: [`path option: ${explicit}`] };
  looked.push("path option (not given)");
  const env = readEnv();
  looked.push(env.note);
  if (env.value) return { path: env.value, looked };
  const here = new URL("../build/liblsoftmax.so", import.meta.url);
  if (here.protocol === "file:") {
    const path = decodeURIComponent(here.pathname);
    looked.push(`default: ${path}`);
    return { path, looked };
  }
  looked.push(`default: none, since mod.ts was imported from ${new URL("../", import.meta.url)}`);
  return { looked };
}

/**
 * Opens the library once per process; later calls return the same one. Throws when it cannot
 * be found or opened, or when its ABI version differs from these bindings'.
 */
export function loadLibrary(path?: string): Library {
  if (loaded) {
    if (path !== undefined && path !== loaded.path) {
      throw new Error(
        `path: expected the library already loaded (${loaded.path}), got ${path}; ` +
          "one process uses one liblsoftmax",
      );
    }
    return loaded;
  }
  const { path: found, looked } = locateLibrary(path);
  const where = `Looked at: ${looked.join("; ")}.`;
  if (found === undefined) {
    throw new Error(`liblsoftmax: no library to load. ${where} ${BUILD_HINT}`);
  }
  let lib: Deno.DynamicLibrary<typeof symbols>;
  try {
    lib = Deno.dlopen(found, symbols);
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    throw new Error(`liblsoftmax: cannot open ${found}: ${reason}. ${where} ${BUILD_HINT}`);
  }
  const abi = lib.symbols.lsm_abi_version();
  if (abi !== ABI_VERSION) {
    lib.close();
    throw new Error(
      `liblsoftmax: ${found} has ABI version ${abi}, expected ${ABI_VERSION}: rebuild it ` +
        "from the same checkout as mod.ts",
    );
  }
  loaded = { path: found, version: cString(lib.symbols.lsm_version()), symbols: lib.symbols };
  return loaded;
}
