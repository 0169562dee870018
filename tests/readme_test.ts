// readme_test.ts: every TypeScript block of README.md runs, as a reader would paste it, in a
// child Deno process against the library under test (LSOFTMAX_LIB), from the checkout's root, so
// that "./mod.ts" is this checkout's and the deno.json import map applies (it maps the URL the
// first block imports from to the checkout). A block fenced ```ts ignore is not run; each such
// block is listed, and there should be next to none.
//
// Needs --allow-run, --allow-read, --allow-env.

import assert from "node:assert/strict";
import { info } from "./check.ts";
import { onCpuWhenEmulated, runClean } from "./serve.ts";

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname).replace(/\/$/, "");
const LIB = Deno.realPathSync(info.library);
const EMULATED = info.cuda.devices.some((d) => d.name.startsWith("lsm-emu"));

interface Block {
  line: number;
  info: string;
  code: string;
}

/** The fenced blocks of a Markdown text whose language is ts/typescript, with their line. */
export function typescriptBlocks(text: string): Block[] {
  const blocks: Block[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S+)(.*)$/.exec(lines[i]);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]); i++) body.push(lines[i]);
    if (["ts", "typescript"].includes(open[1])) {
      blocks.push({ line: start + 1, info: open[2].trim(), code: body.join("\n") + "\n" });
    }
  }
  return blocks;
}

const BLOCKS = typescriptBlocks(Deno.readTextFileSync(`${ROOT}/README.md`));
const IGNORED = BLOCKS.filter((b) => b.info.split(/\s+/).includes("ignore"));

Deno.test("README: it has TypeScript blocks, and the ones not run are marked and few", () => {
  assert.ok(BLOCKS.length >= 4, `found ${BLOCKS.length} ts blocks`);
  for (const b of IGNORED) console.log(`README.md:${b.line}: \`\`\`ts ignore: not run`);
  assert.ok(IGNORED.length <= 1, `${IGNORED.length} blocks are marked ignore`);
});

for (const block of BLOCKS.filter((b) => !IGNORED.includes(b))) {
  const first = block.code.split("\n").find((l) => l.trim() && !l.startsWith("//")) ?? "";
  Deno.test(`README.md:${block.line}: runs (${first.slice(0, 60)})`, async () => {
    const r = await runClean(
      ["deno", "run", "--no-prompt", "--allow-ffi", "--allow-env", "--allow-read", "--ext=ts", "-"],
      { LSOFTMAX_LIB: LIB },
      {
        cwd: ROOT,
        keep: ["HOME", "DENO_DIR", "XDG_CACHE_HOME"],
        stdin: onCpuWhenEmulated(block.code, EMULATED),
      },
    );
    assert.equal(
      r.code,
      0,
      `README.md:${block.line} failed (${r.code}):\n${r.stderr}\n${r.stdout}`,
    );
  });
}
