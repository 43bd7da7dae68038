/** The executable's entry (bin/cedana imports the built copy). */
import { main } from './run.js';

process.exitCode = await main(process.argv.slice(2));
