// The prebuilt library of a module imported over http(s): downloaded from lib/ beside the module
// (or from LSOFTMAX_MIRROR), checked against the SHA-256 pinned in prebuilt.ts while still in
// memory, and only then written to Deno's cache directory (a temporary name in the same folder,
// renamed once complete), so that no partial or foreign file is ever trusted. A cached file is
// checked again on every run before it is used; one that fails is downloaded anew.

import { PREBUILT, type Prebuilt, type PrebuiltFile } from "./prebuilt.ts";

/** The environment variable naming the library. */
export const LIBRARY_ENV = "LSOFTMAX_LIB";
/** The environment variable naming a mirror: the URL of a folder holding the library files. */
export const MIRROR_ENV = "LSOFTMAX_MIRROR";

/** The platform's key in {@link Prebuilt.files}: `${Deno.build.os}-${Deno.build.arch}`. */
export function platform(): string {
  return `${Deno.build.os}-${Deno.build.arch}`;
}

/** The file name of the library of `version` for `key` ("linux-x86_64"). */
export function prebuiltName(version: string, key: string): string {
  const os = key.split("-")[0];
  const ext = os === "darwin" ? "dylib" : os === "windows" ? "dll" : "so";
  return `liblsoftmax-${version}-${key}.${ext}`;
}

// The variables that locate Deno's cache directory, as Deno itself (and denosaurs/plug) does.
function cacheVariables(): string[] {
  if (Deno.build.os === "windows") return ["DENO_DIR", "LOCALAPPDATA"];
  if (Deno.build.os === "darwin") return ["DENO_DIR", "HOME"];
  return ["DENO_DIR", "XDG_CACHE_HOME", "HOME"];
}

/** Every variable an import over http(s) may read, for `--allow-env=`. */
export function remoteVariables(): string[] {
  return [LIBRARY_ENV, MIRROR_ENV, ...cacheVariables()];
}

const HINT = "Or build the library with `make` in a checkout of the module and point " +
  `${LIBRARY_ENV} at build/liblsoftmax.so.`;

function isNotCapable(e: unknown): e is Error {
  return e instanceof Deno.errors.NotCapable;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function variable(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch (e) {
    if (!isNotCapable(e)) throw e;
    throw new Error(
      `liblsoftmax: cannot read ${name} (${e.name}): run with ` +
        `--allow-env=${remoteVariables().join(",")}`,
    );
  }
}

function join(...parts: string[]): string {
  return parts.map((p, i) => i === 0 ? p.replace(/[\\/]+$/, "") : p).join("/");
}

/** Deno's cache directory: DENO_DIR, else the platform's cache directory and `deno`. */
export function denoCacheDir(): string {
  const dir = variable("DENO_DIR");
  if (dir) return dir;
  if (Deno.build.os === "windows") {
    const local = variable("LOCALAPPDATA");
    if (local) return join(local, "deno");
  } else {
    const xdg = Deno.build.os === "darwin" ? undefined : variable("XDG_CACHE_HOME");
    if (xdg) return join(xdg, "deno");
    const home = variable("HOME");
    if (home) {
      return Deno.build.os === "darwin"
        ? join(home, "Library", "Caches", "deno")
        : join(home, ".cache", "deno");
    }
  }
  throw new Error(
    `liblsoftmax: no cache directory for the prebuilt library: ${cacheVariables().join(", ")} ` +
      "are all unset. Set DENO_DIR to a folder it may write. " + HINT,
  );
}

/** The folder that holds one prebuilt library in the cache, keyed by version and checksum. */
export function cacheFolder(version: string, sha256: string): string {
  return join(denoCacheDir(), "plug", "lsoftmax", `${version}-${sha256}`);
}

/** The SHA-256 of `bytes`, in lower-case hex. */
export async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A file-system call on the cache, its permission errors turned into the flags to run with.
async function onCache<T>(what: string, root: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (isNotCapable(e)) {
      throw new Error(
        `liblsoftmax: cannot ${what}: run with --allow-read=${root} --allow-write=${root} ` +
          `(${e.message})`,
      );
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new Error(
        `liblsoftmax: cannot ${what}: ${e.message}. Set DENO_DIR to a folder this user may ` +
          `write. ${HINT}`,
      );
    }
    throw e;
  }
}

// The bytes at `url`, whole, or an Error that says why not and what to do.
async function download(url: URL): Promise<Uint8Array<ArrayBuffer>> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch (e) {
    if (isNotCapable(e)) {
      throw new Error(
        `liblsoftmax: cannot download ${url}: run with --allow-net=${url.host} (${e.message})`,
      );
    }
    throw new Error(`liblsoftmax: cannot download ${url}: ${message(e)}. ${HINT}`);
  }
  if (!response.ok) {
    await response.body?.cancel();
    throw new Error(
      `liblsoftmax: cannot download ${url}: HTTP ${response.status} ${response.statusText}. ` +
        `Serve the folder \`make dist\` writes, or name a mirror with ${MIRROR_ENV}. ${HINT}`,
    );
  }
  try {
    return new Uint8Array(await response.arrayBuffer());
  } catch (e) {
    throw new Error(
      `liblsoftmax: the download of ${url} broke off (${message(e)}); nothing was cached. ` +
        HINT,
    );
  }
}

// The cached file's bytes, or undefined when there is none.
async function readCached(path: string): Promise<Uint8Array<ArrayBuffer> | undefined> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

// Writes verified bytes under a temporary name beside `path`, then renames it: a run stopped
// part way leaves a *.part file, which no later run reads.
async function store(folder: string, path: string, bytes: Uint8Array<ArrayBuffer>) {
  await Deno.mkdir(folder, { recursive: true });
  const part = `${path}.${crypto.randomUUID()}.part`;
  try {
    await Deno.writeFile(part, bytes, { mode: 0o644 });
    await Deno.rename(part, path);
  } catch (e) {
    await Deno.remove(part).catch(() => {});
    throw e;
  }
}

/** Where the library for this platform comes from and goes to. */
export interface PrebuiltSource {
  /** The URL it is downloaded from. */
  readonly url: URL;
  /** Its path in the cache. */
  readonly path: string;
  /** Its pinned entry. */
  readonly entry: PrebuiltFile;
}

/**
 * The prebuilt library for this platform: its URL (beside `root`, the module's folder, or under
 * LSOFTMAX_MIRROR) and its place in the cache. Throws when this copy carries none for it.
 */
export function prebuiltSource(root: URL, prebuilt: Prebuilt = PREBUILT): PrebuiltSource {
  const key = platform();
  const entry = prebuilt.files[key];
  if (!prebuilt.version || !entry) {
    const carried = Object.keys(prebuilt.files);
    throw new Error(
      carried.length === 0
        ? `liblsoftmax: the module at ${root} carries no prebuilt library (the folder ` +
          "`make dist` writes does). " + HINT
        : `liblsoftmax: no prebuilt library for ${key} (there are: ${carried.join(", ")}). ` +
          HINT,
    );
  }
  const mirror = variable(MIRROR_ENV);
  const base = mirror
    ? new URL(mirror.endsWith("/") ? mirror : `${mirror}/`)
    : new URL("lib/", root);
  const folder = cacheFolder(prebuilt.version, entry.sha256);
  return { url: new URL(entry.file, base), path: join(folder, entry.file), entry };
}

/**
 * The path of the verified prebuilt library in the cache, downloaded first when it is not
 * there (or no longer matches its checksum). Nothing that fails the checksum is written.
 *
 * @param root The module's folder (the URL lib/ is beside).
 * @param prebuilt The pinned libraries; this copy's by default.
 * @returns The cached file's path, ready to open.
 */
export async function fetchPrebuilt(root: URL, prebuilt: Prebuilt = PREBUILT): Promise<string> {
  const { url, path, entry } = prebuiltSource(root, prebuilt);
  const folder = path.slice(0, path.lastIndexOf("/"));
  const cacheRoot = folder.slice(0, folder.lastIndexOf("/"));
  const cached = await onCache(`read ${path}`, cacheRoot, () => readCached(path));
  if (cached !== undefined) {
    if (await sha256(cached) === entry.sha256) return path;
    await onCache(
      `remove ${path}, which no longer matches its SHA-256`,
      cacheRoot,
      () => Deno.remove(path),
    );
  }
  const bytes = await download(url);
  const actual = await sha256(bytes);
  if (actual !== entry.sha256) {
    throw new Error(
      `liblsoftmax: ${url} has SHA-256 ${actual}, expected ${entry.sha256} (pinned in ` +
        `${new URL("ffi/prebuilt.ts", root)}): not opened, not cached. The server or mirror ` +
        `serves another file than this module's release. ${HINT}`,
    );
  }
  await onCache(`write ${path}`, cacheRoot, () => store(folder, path, bytes));
  return path;
}
