// The bundle goes into the Python package (src/lightpipe/service/web), which `lightpipe serve` serves at /.
// File names carry a content hash, so a fresh build of the same sources gives the same files (.ci/run checks).
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

export default defineConfig({
  plugins: [react()],
  base: '/',
  build: {
    outDir: '../src/lightpipe/service/web',
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 4096,
  },
  server: {
    // `npm run dev` against a `lightpipe serve` on the default port
    proxy: { '/api': { target: 'http://127.0.0.1:8000', ws: true } },
  },
});
