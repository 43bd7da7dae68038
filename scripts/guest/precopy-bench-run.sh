#!/bin/sh
# Inside the test guest: the system set-up, then the pre-copy benchmark (scripts/guest/precopy-bench.ts).
d=$(dirname "$0")
. "$d/inside.sh"
cd "$d/../.." && node dist/scripts/guest/precopy-bench.js
