// Builds web/dist from web/demo, web/console and web/shared with esbuild: each page's app.js is bundled (with the
// centrifuge SDK from node_modules, locked by package-lock.json) and minified, its style.css bundled with its
// @imports, its index.html copied, and the licenses of the bundled npm packages gathered in
// THIRD_PARTY_LICENSES.txt. Herald embeds web/dist (crates/herald/src/web.rs), so commit it after a build.
//
//   npm ci --prefix web && npm run build --prefix web     # rebuild web/dist
//   npm run check --prefix web                            # exit 1 when web/dist differs from what a build makes
import * as esbuild from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(root, 'dist');
const check = process.argv.includes('--check');
const PAGES = ['demo', 'console'];

async function bundle(entry, out) {
  const result = await esbuild.build({
    entryPoints: [path.join(root, entry)],
    outfile: path.join(dist, out),
    bundle: true,
    minify: true,
    format: entry.endsWith('.js') ? 'iife' : undefined,
    target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
    charset: 'utf8',
    legalComments: 'none',
    write: false,
    metafile: true,
    logLevel: 'warning',
  });
  return { files: result.outputFiles.map((f) => [path.relative(dist, f.path), Buffer.from(f.contents)]), inputs: Object.keys(result.metafile.inputs) };
}

// The licenses of the npm packages whose code went into a bundle (legal comments are stripped from the bundles).
function licenses(inputs) {
  const pkgs = new Map();
  for (const input of inputs) {
    const m = input.replace(/\\/g, '/').match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
    if (m) pkgs.set(m[1], path.join(root, 'node_modules', m[1]));
  }
  const parts = ['Third-party code bundled into web/dist (built by web/build.mjs from web/package-lock.json).\n'];
  for (const name of [...pkgs.keys()].sort()) {
    const dir = pkgs.get(name);
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    const file = fs.readdirSync(dir).sort().find((f) => /^(licen[cs]e|copying)(\.md|\.txt)?$/i.test(f));
    const text = file ? fs.readFileSync(path.join(dir, file), 'utf8').trim() : `License: ${meta.license || 'unknown'}`;
    parts.push(`${'='.repeat(78)}\n${name} ${meta.version} (${meta.license || 'unknown'})\n${'='.repeat(78)}\n${text}\n`);
  }
  return Buffer.from(parts.join('\n'));
}

async function build() {
  const out = new Map();
  const inputs = [];
  for (const page of PAGES) {
    for (const asset of ['app.js', 'style.css']) {
      const r = await bundle(`${page}/${asset}`, `${page}/${asset}`);
      for (const [name, bytes] of r.files) out.set(name, bytes);
      inputs.push(...r.inputs);
    }
    out.set(`${page}/index.html`, fs.readFileSync(path.join(root, page, 'index.html')));
  }
  out.set('THIRD_PARTY_LICENSES.txt', licenses(inputs));
  return out;
}

function listDist(dir = dist, prefix = '') {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listDist(path.join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]);
}

const files = await build();
if (check) {
  const problems = [];
  for (const [name, bytes] of files) {
    const file = path.join(dist, name);
    if (!fs.existsSync(file)) problems.push(`missing ${name}`);
    else if (!fs.readFileSync(file).equals(bytes)) problems.push(`stale ${name}`);
  }
  for (const name of listDist()) if (!files.has(name)) problems.push(`extra ${name}`);
  if (problems.length) {
    console.error(`web/dist is not what web/build.mjs makes from the sources:\n  ${problems.join('\n  ')}\n` +
      'rebuild it with `npm ci --prefix web && npm run build --prefix web` and commit web/dist');
    process.exit(1);
  }
  console.log(`web/dist is up to date (${files.size} files)`);
} else {
  fs.rmSync(dist, { recursive: true, force: true });
  for (const [name, bytes] of files) {
    fs.mkdirSync(path.dirname(path.join(dist, name)), { recursive: true });
    fs.writeFileSync(path.join(dist, name), bytes);
  }
  for (const name of [...files.keys()].sort()) console.log(`  web/dist/${name}  ${files.get(name).length} bytes`);
}
