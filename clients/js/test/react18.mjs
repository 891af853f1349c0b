// Runs the hook tests against React 18 instead of the package's React 19: `node --import
// ./test/react18.mjs --test test/react.test.mjs`. A module resolution hook makes `react`,
// `react-dom` and `@testing-library/react` (and their subpaths), wherever they are imported
// from — the tests, `dist/react.js` — resolve in `test/react18/` (its own committed lockfile).
import { register } from 'node:module';

register('./react18-hooks.mjs', import.meta.url);
