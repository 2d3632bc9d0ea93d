// Bundles src/playground.jsx (and the styles it imports) into <out>/playground.js and
// <out>/playground.css, and src/dashboard.jsx into <out>/dashboard.js, from the packages in node_modules (installed by `npm ci` from the
// lockfile). Usage: node build.mjs <out dir>
import { build } from 'esbuild';

const out = process.argv[2];
if (!out) {
  console.error('usage: node build.mjs <out dir>');
  process.exit(2);
}
await build({
  entryPoints: { playground: 'src/playground.jsx', dashboard: 'src/dashboard.jsx' },
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020'],
  outdir: out,
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"production"' },
  loader: { '.woff': 'dataurl', '.woff2': 'dataurl', '.ttf': 'dataurl', '.svg': 'dataurl' },
  legalComments: 'linked',
  logLevel: 'warning',
});
