#!/bin/sh
# Training container entrypoint: run the command as the owner of the mounted project folder (/work), so that
# data/, runs/ and models/ written there belong to the host user, whoever that is.
set -eu
uid=$(stat -c %u /work)
gid=$(stat -c %g /work)
export HOME=/tmp
if [ "$(id -u)" -ne 0 ] || [ "$uid" -eq 0 ]; then
    exec "$@"
fi
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
