# shellcheck shell=bash
# stack-env.sh: where the local stack lives, shared by stack-up and stack-down.
# Set SECURE=1 before sourcing for the secure stack's defaults (its own data dir and
# ports, so it runs beside the plain one). Every value can be set by its AIFAB_* variable.
HOST=127.0.0.1
if ((${SECURE:-0})); then
    DATA_DIR=${AIFAB_DATA_DIR:-$HOME/.aifab/stack-secure}
    KAFKA_PORT=${AIFAB_KAFKA_PORT:-9192}
    KAFKA_CONTROLLER_PORT=${AIFAB_KAFKA_CONTROLLER_PORT:-9193}
    KAFKA_INTERNAL_PORT=${AIFAB_KAFKA_INTERNAL_PORT:-9194}
    NATS_PORT=${AIFAB_NATS_PORT:-4322}
    NATS_MONITOR_PORT=${AIFAB_NATS_MONITOR_PORT:-8322}
    REDIS_PORT=${AIFAB_REDIS_PORT:-6479}
else
    DATA_DIR=${AIFAB_DATA_DIR:-$HOME/.aifab/stack}
    KAFKA_PORT=${AIFAB_KAFKA_PORT:-9092}
    KAFKA_CONTROLLER_PORT=${AIFAB_KAFKA_CONTROLLER_PORT:-9093}
    KAFKA_INTERNAL_PORT=
    NATS_PORT=${AIFAB_NATS_PORT:-4222}
    NATS_MONITOR_PORT=${AIFAB_NATS_MONITOR_PORT:-8222}
    REDIS_PORT=${AIFAB_REDIS_PORT:-6379}
fi
