#!/bin/sh
# Inside the test guest: the system set-up, then the pre-copy scenario (scripts/guest/precopy.ts).
d=$(dirname "$0")
. "$d/inside.sh"
cd "$d/../.." && node dist/scripts/guest/precopy.js
