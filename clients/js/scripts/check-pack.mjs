// Fails unless `npm pack` would ship only the build (dist/: .js and .d.ts), the README, the
// licences and package.json (which npm always includes).
import { execFileSync } from 'node:child_process';

const [pack] = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { encoding: 'utf8' }));
const files = pack.files.map((f) => f.path).sort();
const allowed = /^(dist\/[\w.-]+\.(js|d\.ts)|README\.md|LICENSE-MIT|LICENSE-APACHE|package\.json)$/;
const extra = files.filter((f) => !allowed.test(f));
const needed = ['README.md', 'LICENSE-MIT', 'LICENSE-APACHE', 'dist/index.js', 'dist/index.d.ts', 'dist/socketio.js', 'dist/socketio.d.ts', 'dist/react.js', 'dist/react.d.ts'];
const missing = needed.filter((f) => !files.includes(f));
console.log(`${pack.filename}: ${files.length} files, ${pack.size} bytes packed\n  ${files.join('\n  ')}`);
if (extra.length || missing.length) {
  console.error(`unexpected: ${extra.join(', ') || '-'}; missing: ${missing.join(', ') || '-'}`);
  process.exit(1);
}
