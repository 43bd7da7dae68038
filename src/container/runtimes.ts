/** The OCI runtimes cedana drives: apart from runtime.ts, so `cedana check` loads no process runner for them. */
export const RUNTIMES = ['runc', 'crun'] as const;
export type RuntimeName = (typeof RUNTIMES)[number];
