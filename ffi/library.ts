// Finding and opening liblsoftmax, and the one function that turns a status into an Error. The
// library is taken from, in order: an explicit path, the LSOFTMAX_LIB environment variable, then
// build/liblsoftmax.so beside mod.ts when the module is a local file.

import { ABI_VERSION, Status, type Symbols, symbols } from "./symbols.ts";

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

/** The Error for a failed status: a RangeError for a bad argument, else an Error. */
export function statusError(status: number, message: string, what?: string): Error {
  const said = message || `failed with status ${status}`;
  const text = what ? `${what}: ${said}` : said;
  return status === Status.INVALID_ARGUMENT ? new RangeError(text) : new Error(text);
}

// The variable's value. When it cannot be read the library is not chosen silently: the caller
// may have set it, and must not get another library without being told.
function readEnv(): string | undefined {
  try {
    return Deno.env.get(LIBRARY_ENV) || undefined;
  } catch (e) {
    throw new Error(
      `liblsoftmax: cannot read ${LIBRARY_ENV} (${(e as Error).name}): run with ` +
        `--allow-env=${LIBRARY_ENV}, or name the library with useLibrary(path)`,
    );
  }
}

/** Where the library is looked for, in order, with the first usable path. */
export function locateLibrary(explicit?: string): { path?: string; looked: string[] } {
  if (explicit !== undefined) return { path: explicit, looked: [`path option: ${explicit}`] };
  const looked = ["path option (not given)"];
  const env = readEnv();
  looked.push(env ? `${LIBRARY_ENV}=${env}` : `${LIBRARY_ENV} (unset)`);
  if (env) return { path: env, looked };
  const here = new URL("../build/liblsoftmax.so", import.meta.url);
  if (here.protocol === "file:") {
    const path = decodeURIComponent(here.pathname);
    looked.push(`default: ${path}`);
    return { path, looked };
  }
  looked.push(`default: none, since mod.ts was imported from ${new URL("../", import.meta.url)}`);
  return { looked };
}

// Deno's message repeats its own prefix ("Could not open library: Could not open library: ...").
function openError(found: string, e: unknown, where: string): Error {
  if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
    return new Error(
      `liblsoftmax: cannot open ${found}: run with --allow-ffi (${(e as Error).message})`,
    );
  }
  const reason = (e instanceof Error ? e.message : String(e)).replace(
    /^(Could not open library: )+/,
    "",
  );
  return new Error(`liblsoftmax: cannot open ${found}: ${reason}. ${where} ${BUILD_HINT}`);
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
    throw openError(found, e, where);
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
