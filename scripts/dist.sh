#!/usr/bin/env bash
# Writes the folder the module is served from, by any static HTTP server or as a release's
# files: mod.ts, tfjs.ts and every local module they import (followed with `deno info`, so the
# list cannot go stale), and under lib/ the prebuilt library of each platform given, named
# liblsoftmax-<version>-<platform>.so, its version and SHA-256 pinned in the folder's copy of
# ffi/prebuilt.ts. A module imported from that folder's URL fetches and verifies it (ffi/fetch.ts).
#
#   scripts/dist.sh [--out DIR] [--version V] [[PLATFORM=]LIB ...]
#
# LIB is build/liblsoftmax.so by default; PLATFORM is this machine's as Deno names it
# (`${Deno.build.os}-${Deno.build.arch}`: linux-x86_64, linux-aarch64). The version is what the
# library of this platform reports (lsm_version), read by loading it; with only libraries of
# other platforms, --version gives it (given with one, it must agree). DIR (dist by default) is
# replaced as a whole; an existing DIR must be one this script wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
deno=${DENO:-scripts/deno}
out=dist
version=
libs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --version) version=${2:?--version needs a value}; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "dist.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) libs+=("$1"); shift ;;
  esac
done
[ ${#libs[@]} -gt 0 ] || libs=(build/liblsoftmax.so)

case "$(uname -s)" in
  Linux) os=linux ;;
  Darwin) os=darwin ;;
  *) echo "dist.sh: unknown system $(uname -s)" >&2; exit 1 ;;
esac
case "$(uname -m)" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) echo "dist.sh: unknown machine $(uname -m)" >&2; exit 1 ;;
esac
host="$os-$arch"
marker=.lsoftmax-dist

if [ -e "$out" ] && [ ! -e "$out/$marker" ]; then
  echo "dist.sh: $out exists and was not written by this script; remove it or pick --out" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$out.tmp.XXXXXX")
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

# The module's files: the local modules of mod.ts's and tfjs.ts's graphs (npm packages stay
# npm: specifiers, fetched by Deno; a remote import would not be served, so it is refused).
"$deno" eval '
const root = new URL(`file://${Deno.cwd()}/`);
const files = new Set();
for (const entry of ["mod.ts", "tfjs.ts"]) {
  const r = new Deno.Command(Deno.execPath(), { args: ["info", "--json", entry] }).outputSync();
  if (!r.success) throw new Error(`deno info ${entry}: ${new TextDecoder().decode(r.stderr)}`);
  for (const m of JSON.parse(new TextDecoder().decode(r.stdout)).modules) {
    if (m.error) throw new Error(`${m.specifier}: ${m.error}`);
    if (m.kind === "npm" || m.specifier.startsWith("npm:") || m.specifier.startsWith("node:")) {
      continue;
    }
    if (!m.specifier.startsWith(root.href)) {
      throw new Error(`${entry} imports ${m.specifier}, which is not a file of this checkout`);
    }
    files.add(decodeURIComponent(m.specifier.slice(root.href.length)));
  }
}
if (!files.has("ffi/prebuilt.ts")) throw new Error("the module no longer imports ffi/prebuilt.ts");
console.log([...files].sort().join("\n"));
' > "$tmp/.files"
while IFS= read -r f; do
  mkdir -p "$tmp/$(dirname "$f")"
  cp "$f" "$tmp/$f"
done < "$tmp/.files"
rm "$tmp/.files"

# The libraries: this platform's version first, then each file under its platform's name.
for spec in "${libs[@]}"; do
  case "$spec" in *=*) plat=${spec%%=*} lib=${spec#*=} ;; *) plat=$host lib=$spec ;; esac
  [[ "$plat" =~ ^[a-z0-9]+-[a-z0-9_]+$ ]] || { echo "dist.sh: $plat: not a platform (os-arch)" >&2; exit 1; }
  [ -f "$lib" ] || { echo "dist.sh: $lib: no such library" >&2; exit 1; }
  if [ "$plat" = "$host" ]; then
    reported=$(LSOFTMAX_LIB=$(realpath "$lib") "$deno" eval \
      'import { loadLibrary } from "./ffi/library.ts"; console.log(loadLibrary().version);')
    if [ -n "$version" ] && [ "$version" != "$reported" ]; then
      echo "dist.sh: --version $version, but $lib reports $reported" >&2
      exit 1
    fi
    version=$reported
  fi
done
[ -n "$version" ] || { echo "dist.sh: no library for $host to read the version from: give --version" >&2; exit 1; }
[[ "$version" =~ ^[0-9A-Za-z.+_-]+$ ]] || { echo "dist.sh: $version: not a version" >&2; exit 1; }

mkdir -p "$tmp/lib"
entries=
for spec in "${libs[@]}"; do
  case "$spec" in *=*) plat=${spec%%=*} lib=${spec#*=} ;; *) plat=$host lib=$spec ;; esac
  case "$plat" in
    darwin-*) ext=dylib ;;
    windows-*) ext=dll ;;
    *) ext=so ;;
  esac
  name="liblsoftmax-$version-$plat.$ext"
  cp "$lib" "$tmp/lib/$name"
  sum=$(sha256sum "$tmp/lib/$name" | cut -d' ' -f1)
  entries+="    \"$plat\": { file: \"$name\", sha256: \"$sum\" },"$'\n'
  echo "dist.sh: lib/$name  sha256 $sum"
done

# The pin: the checkout's empty PREBUILT replaced by these files.
pin='export const PREBUILT: Prebuilt = { version: "", files: {} };'
[ "$(grep -cxF "$pin" ffi/prebuilt.ts)" = 1 ] || {
  echo "dist.sh: ffi/prebuilt.ts no longer holds the line: $pin" >&2
  exit 1
}
{
  while IFS= read -r line; do
    if [ "$line" = "$pin" ]; then
      printf 'export const PREBUILT: Prebuilt = {\n  version: "%s",\n  files: {\n%s  },\n};\n' \
        "$version" "$entries"
    else
      printf '%s\n' "$line"
    fi
  done < ffi/prebuilt.ts
} > "$tmp/ffi/prebuilt.ts"

touch "$tmp/$marker"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "dist.sh: wrote $out/ (liblsoftmax $version: serve it as is; mod.ts and tfjs.ts are its entry points)"
