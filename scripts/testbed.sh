#!/usr/bin/env bash
# Extra hosts for trying `cedana migrate` by hand (root): scripts/testbed.sh up [N] | down | status
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f "$here/dist/scripts/testbed/cli.js" ]] || (cd "$here" && npm run --silent build)
exec node "$here/dist/scripts/testbed/cli.js" "$@"
