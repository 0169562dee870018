/**
 * The command line of the Fashion-MNIST programs (examples/fashion_mnist.ts,
 * examples/demo_sweep.ts): the flags both take, and each program's own.
 *
 * @example
 * ```ts
 * import { parseDemoArgs } from "./demo_args.ts";
 * const args = parseDemoArgs(["--quick", "--backend", "cpu"]);
 * console.log(args.quick, args.backend, args.out); // true cpu undefined
 * ```
 * @module
 */

/** The flags of both programs. */
export interface DemoArgs {
  /** `--quick`: a subset, for a smoke test. */
  quick: boolean;
  /** `--data DIR` (or FASHION_MNIST_DIR): the four IDX files. */
  data: string;
  /** `--out DIR`: where the documents go; docs without `--quick`, nowhere with it by default. */
  out?: string;
  /** `--backend NAME`: TensorFlow.js's backend. */
  backend?: string;
}

/**
 * The arguments: `--quick`, `--data DIR`, `--out DIR`, `--backend NAME`, and the program's own
 * `flags`, each a flag's handler given the arguments so far and a function reading its value.
 *
 * @param argv The command line (Deno.args).
 * @param flags The program's own flags, by name ("--seeds"), in the order its usage lists them.
 * @returns The arguments; an unknown flag or a flag missing its value throws.
 */
export function parseDemoArgs<A extends DemoArgs = DemoArgs>(
  argv: string[],
  flags: Record<string, (args: A, value: () => string) => void> = {},
): A {
  const args = {
    quick: false,
    data: Deno.env.get("FASHION_MNIST_DIR") ?? "/usr/share/datasets/fashion-mnist",
  } as A;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a}: expected a value after it`);
      return argv[++i];
    };
    if (a === "--quick") args.quick = true;
    else if (a === "--data") args.data = value();
    else if (a === "--out") args.out = value();
    else if (a === "--backend") args.backend = value();
    else if (Object.hasOwn(flags, a)) flags[a](args, value);
    else {
      const known = ["--quick", "--data", "--out", "--backend", ...Object.keys(flags)];
      throw new Error(`unknown argument ${a} (expected ${known.join(", ")})`);
    }
  }
  if (!args.quick) args.out ??= "docs";
  return args;
}
