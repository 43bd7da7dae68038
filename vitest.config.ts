import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests freeze processes, hold PIDs and network namespaces: one file at a time.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    reporters: process.env.CI ? ['verbose'] : ['default'],
    // The CRIU logs of the failures tests provoke go to a temporary directory, not /var/log/cedana.
    env: { CEDANA_LOG_DIR: join(tmpdir(), 'cedana-test-logs') },
  },
});
