import { defineConfig } from 'vite';

// The documents example (`cargo run --example documents`, 127.0.0.1:3000 by default) serves the
// WebSocket endpoint; the dev server and `vite preview` forward /occupancy to it. The Host header
// is kept (no changeOrigin), so the endpoint's Origin check sees the page's own origin.
const target = process.env.OCCUPANCY_URL || 'http://127.0.0.1:3000';
const proxy = { '/occupancy': { target, ws: true } };

export default defineConfig({
  esbuild: { jsx: 'automatic' },
  // occupancy-client is linked from clients/js: its hooks must use this app's React.
  resolve: { dedupe: ['react', 'react-dom'] },
  server: { proxy },
  preview: { proxy },
});
