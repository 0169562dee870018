// Finding and opening liblsoftmax, and the one function that turns a status into an Error. The
// library is taken from, in order: an explicit path, the LSOFTMAX_LIB environment variable, then
// build/liblsoftmax.so beside mod.ts when the module is a local file, or the prebuilt library
// pinned in prebuilt.ts (fetched and cached by fetch.ts) when it was imported over http(s).

import { fetchPrebuilt, LIBRARY_ENV, remoteVariables } from "./fetch.ts";
import { ABI_VERSION, Status, type Symbols, symbols } from "./symbols.ts";

export { LIBRARY_ENV };

/** The opened library. */
export interface Library {
  /** The path it was opened from. */
  readonly path: string;
  /** Its version string (`lsm_version`). */
  readonly version: string;
  /** The raw C functions. */
  readonly symbols: Symbols;
}

const BUILD_HINT = "Build it with `make` in a checkout of the module " +
  `(it writes build/liblsoftmax.so), then point ${LIBRARY_ENV} at it.`;

// The module's folder, and whether it came over the network.
const ROOT = new URL("../", import.meta.url);
const REMOTE = ROOT.protocol === "http:" || ROOT.protocol === "https:";

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
    const allow = REMOTE ? remoteVariables().join(",") : LIBRARY_ENV;
    throw new Error(
      `liblsoftmax: cannot read ${LIBRARY_ENV} (${(e as Error).name}): run with ` +
        `--allow-env=${allow}, or name the library with useLibrary(path)`,
    );
  }
}

// Imported over http(s), the prebuilt library is made ready here, at import: Deno.dlopen is
// synchronous and so is the first call that needs the library, but a download is not. With
// LSOFTMAX_LIB set nothing is fetched. A failure is kept rather than thrown, so that the import
// succeeds and useLibrary(path) can still choose another library; the first call that needs the
// prebuilt one throws it. Nothing fetched is opened before that call, and never when an explicit
// path comes first.
const prebuilt = REMOTE ? await prepare() : undefined;

async function prepare(): Promise<{ path: string } | { error: Error } | undefined> {
  try {
    if (readEnv() !== undefined) return undefined;
    return { path: await fetchPrebuilt(ROOT) };
  } catch (e) {
    return { error: e instanceof Error ? e : new Error(String(e)) };
  }
}

/**
 * Where the library is looked for, in order, with the first usable path; `error`, when there is
 * none, is why the prebuilt library of an http(s) import is not there.
 */
export function locateLibrary(
  explicit?: string,
): { path?: string; looked: string[]; error?: Error } {
  if (explicit !== undefined) return { path: explicit, looked: [`path option: ${explicit}`] };
  const looked = ["path option (not given)"];
  const env = readEnv();
  looked.push(env ? `${LIBRARY_ENV}=${env}` : `${LIBRARY_ENV} (unset)`);
  if (env) return { path: env, looked };
  if (ROOT.protocol === "file:") {
    const path = decodeURIComponent(new URL("build/liblsoftmax.so", ROOT).pathname);
    looked.push(`default: ${path}`);
    return { path, looked };
  }
  if (prebuilt && "path" in prebuilt) {
    looked.push(`prebuilt: ${prebuilt.path}`);
    return { path: prebuilt.path, looked };
  }
  looked.push(`default: none, since mod.ts was imported from ${ROOT}`);
  return { looked, error: prebuilt && "error" in prebuilt ? prebuilt.error : undefined };
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

// OpenBLAS's idle workers spin for about 2^28 cycles (a tenth of a second) after each product
// before they sleep, and our own threads, which run the passes between products, then share the
// cores with them: the fused loss and the head step took 5-10% longer (bench/table.ts). The
// library's OpenBLAS reads the variable once, while it loads, so it is set for the dlopen alone
// (where the user has not set it and may: no prompt), and the environment is left as it was.
const BLAS_TIMEOUT_ENV = "OPENBLAS_THREAD_TIMEOUT";
const BLAS_TIMEOUT = "16"; // 2^16 cycles (about 20 us): back-to-back products keep their workers

function quietBlasThreads<T>(open: () => T): T {
  let set = false;
  try {
    const may = Deno.permissions.querySync({ name: "env", variable: BLAS_TIMEOUT_ENV });
    if (may.state === "granted" && Deno.env.get(BLAS_TIMEOUT_ENV) === undefined) {
      Deno.env.set(BLAS_TIMEOUT_ENV, BLAS_TIMEOUT);
      set = true;
    }
  } catch {
    // Not to be had: OpenBLAS keeps its own timeout, and only speed differs.
  }
  try {
    return open();
  } finally {
    if (set) Deno.env.delete(BLAS_TIMEOUT_ENV);
  }
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
  const { path: found, looked, error } = locateLibrary(path);
  const where = `Looked at: ${looked.join("; ")}.`;
  if (found === undefined) {
    throw error ?? new Error(`liblsoftmax: no library to load. ${where} ${BUILD_HINT}`);
  }
  let lib: Deno.DynamicLibrary<typeof symbols>;
  try {
    lib = quietBlasThreads(() => Deno.dlopen(found, symbols));
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
