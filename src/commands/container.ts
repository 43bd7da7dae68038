/**
 * Containers: the commands' entries. The code is src/container/ (checkpoint.ts: `dump --container`;
 * restore.ts: `restore --container`; migrate.ts: `migrate --container`; bundle.ts: the bundle and
 * root file system; runtime.ts: the runc/crun adapter).
 */
export { dumpContainer, type ContainerDumpArgs, type ContainerDumpResult } from '../container/checkpoint.js';
export { restoreContainer, type ContainerRestoreArgs, type ContainerRestoreResult } from '../container/restore.js';
export { type ArchiveRestoreResult } from '../container/archive-restore.js';
export { migrateContainer, type ContainerMigrateArgs, type ContainerMigrateResult } from '../container/migrate.js';
