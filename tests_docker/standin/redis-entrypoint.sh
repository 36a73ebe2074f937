#!/bin/sh
# As the official image: a command that starts with redis-server runs with protected mode off.
if [ "$1" = "redis-server" ]; then
    exec "$@" --protected-mode no
fi
exec "$@"
