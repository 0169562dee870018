// serve.ts: what the tests of imports over http share: a static server on 127.0.0.1 (port 0)
// over a folder, which records the paths asked for and can serve a file altered or cut short,
// and child Deno processes run with a clean environment.

/** How the server answers for one path instead of serving the file as it is. */
export type Fault = "tamper" | "cut";

/** A static server of `root` on 127.0.0.1. */
export interface Served {
  /** `http://127.0.0.1:PORT/`. */
  readonly base: string;
  /** `127.0.0.1:PORT`. */
  readonly host: string;
  /** The paths asked for, in order. */
  readonly requests: string[];
  /** Faults by path (e.g. "/lib/x.so": "tamper"); changeable while serving. */
  readonly faults: Map<string, Fault>;
  /** Extra routes: a path prefix served from another folder (e.g. "/mirror/" -> dist/lib). */
  readonly aliases: Map<string, string>;
  /** Bodies served instead of a path's file. */
  readonly overrides: Map<string, string>;
  /** Stops the server; later requests find no one listening. */
  close(): Promise<void>;
}

const TYPES: Record<string, string> = {
  ".ts": "application/typescript; charset=utf-8",
  ".so": "application/octet-stream",
};

/**
 * Serves the files under `root` (a folder path) as they are: 404 for anything else, no listing.
 * A "tamper" fault flips the middle byte; a "cut" fault sends half of the body and then breaks
 * the connection.
 */
export function serveFolder(root: string): Served {
  const requests: string[] = [];
  const faults = new Map<string, Fault>();
  const aliases = new Map<string, string>();
  const overrides = new Map<string, string>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    requests.push(path);
    if (path.split("/").includes("..")) return new Response("bad path", { status: 400 });
    let file = `${root}${path}`;
    for (const [prefix, folder] of aliases) {
      if (path.startsWith(prefix)) file = `${folder}/${path.slice(prefix.length)}`;
    }
    let bytes: Uint8Array;
    try {
      const body = overrides.get(path);
      bytes = body === undefined ? await Deno.readFile(file) : new TextEncoder().encode(body);
    } catch {
      return new Response("not found", { status: 404 });
    }
    const ext = path.slice(path.lastIndexOf("."));
    const headers = { "content-type": TYPES[ext] ?? "application/octet-stream" };
    const fault = faults.get(path);
    if (fault === "tamper") {
      bytes = bytes.slice();
      bytes[bytes.length >> 1] ^= 0xff;
    }
    if (fault === "cut") {
      const half = bytes.subarray(0, bytes.length >> 1);
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          controller.enqueue(half);
          await new Promise((r) => setTimeout(r, 50));
          controller.close(); // short of the length announced: the connection is dropped
        },
      });
      return new Response(body, {
        headers: { ...headers, "content-length": String(bytes.length) },
      });
    }
    return new Response(bytes as Uint8Array<ArrayBuffer>, { headers });
  });
  const host = `127.0.0.1:${server.addr.port}`;
  return {
    base: `http://${host}/`,
    host,
    requests,
    faults,
    aliases,
    overrides,
    close: () => server.shutdown(),
  };
}

/**
 * `code` with each `new MarginHead({` given `backend: "cpu"` when `emulated`: on the emulated CUDA
 * device a step of the README's program takes about a second, and the tests that run it are
 * about how the library is found and fetched, not about the CUDA path (the suite covers that).
 */
export function onCpuWhenEmulated(code: string, emulated: boolean): string {
  return emulated ? code.replaceAll("new MarginHead({", 'new MarginHead({ backend: "cpu",') : code;
}

/** A child's exit code and output. */
export interface ChildResult {
  code: number;
  stdout: string;
  stderr: string;
}

let binDir: string | undefined;

/** A folder holding only `deno`, a link to the Deno running the tests, for children's PATH. */
export function denoBinDir(): string {
  if (binDir === undefined) {
    binDir = Deno.makeTempDirSync({ prefix: "lsoftmax-bin-" });
    Deno.symlinkSync(Deno.execPath(), `${binDir}/deno`);
    const dir = binDir;
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
  }
  return binDir;
}

// The machine's certificate settings, which a clean child keeps so that it reaches a registry as
// the test suite does (not its proxies: the children's own traffic is to 127.0.0.1).
const TLS_ENV = ["DENO_CERT", "DENO_TLS_CA_STORE"];

/**
 * Runs `command` (argv) with a clean environment: PATH (with this Deno first, as `deno`), the
 * variables of `env`, the certificate settings (TLS_ENV), and nothing else of this process's but
 * what `keep` names; `stdin` is its input.
 */
export async function runClean(
  command: string[],
  env: Record<string, string>,
  options: { cwd?: string; keep?: string[]; stdin?: string } = {},
): Promise<ChildResult> {
  const vars: Record<string, string> = { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" };
  for (const k of ["PATH", "TMPDIR", ...TLS_ENV, ...(options.keep ?? [])]) {
    const v = Deno.env.get(k);
    if (v !== undefined) vars[k] = v;
  }
  // Deno trusts its own roots unless told otherwise; a machine whose registry traffic passes a
  // proxy with its own CA (trusted in the system store) needs the system store too.
  vars.DENO_TLS_CA_STORE ??= "mozilla,system";
  vars.PATH = `${denoBinDir()}:${vars.PATH ?? "/usr/bin:/bin"}`;
  const child = new Deno.Command(command[0], {
    args: command.slice(1),
    cwd: options.cwd,
    clearEnv: true,
    env: { ...vars, ...env },
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The files under `dir`, recursively, as paths relative to it ([] when it does not exist). */
export function filesUnder(dir: string): string[] {
  const found: string[] = [];
  const walk = (d: string, rel: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(d)];
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) walk(`${d}/${e.name}`, r);
      else found.push(r);
    }
  };
  walk(dir, "");
  return found.sort();
}
