/**
 * cedana migrate: the command's entry. The engine is src/migrate/ (engine.ts: the transaction;
 * prepare.ts: preflight and the plan; precopy/rounds.ts: the rounds and the stop rule;
 * stop-and-copy.ts, post-copy.ts and final.ts: the frozen end).
 */
export { migrate } from '../migrate/engine.js';
export type { MigrateArgs, MigrateResult, PrecopyRound } from '../migrate/context.js';
