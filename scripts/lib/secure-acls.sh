# shellcheck shell=bash
# secure-acls.sh: who may do what on the secure stack, one service per principal.
# Sourced by secure-stack.sh. Kafka topic, group and transactional-id names are the
# defaults of shared/core/src/topics.rs and the services' flags; a deployment that renames
# them writes its own ACLs the same way (docs/security.md).
#
# Kafka: `acl PRINCIPAL RESOURCE PATTERN NAME OPERATION` lines (AclBinding fields).
# Every service may DESCRIBE (see metadata of) the aifab.* topics: readiness probes fetch
# metadata for all of them; and DESCRIBE_CONFIGS, to check their min.insync.replicas at
# start (kafka::layout). Reading or writing a topic, joining a group, or owning a
# transactional id needs its own line.

kafka_acls() {
    local s
    for s in ingest feature inference-worker trainer monitor cost-accountant cli; do
        echo "acl User:$s TOPIC PREFIXED aifab. DESCRIBE"
        echo "acl User:$s TOPIC PREFIXED aifab. DESCRIBE_CONFIGS"
    done
    # read TOPIC..., write TOPIC..., group/txn PREFIX
    kafka_grant ingest "aifab.ingest.raw aifab.predictions" "aifab.features.in aifab.dlq" \
        aifab-ingest aifab-ingest
    # feature answers repeated texts from its cache itself: it writes predictions too.
    kafka_grant feature "aifab.features.in aifab.predictions" \
        "aifab.inference.requests aifab.training.examples aifab.predictions aifab.dlq" \
        aifab-feature aifab-feature
    kafka_grant inference-worker aifab.inference.requests "aifab.predictions aifab.usage aifab.dlq" \
        aifab-inference-worker aifab-inference-worker
    kafka_grant trainer aifab.training.examples aifab.audit aifab-trainer ""
    kafka_grant cost-accountant aifab.usage "aifab.dlq aifab.audit" aifab-cost-accountant ""
    # The monitor reads predictions and dead letters, probes every topic's lag, and reads
    # the committed offsets of every aifab-* group (DESCRIBE on a group allows that, not
    # joining it).
    kafka_grant monitor "aifab.predictions aifab.dlq aifab.audit" "" aifab-monitor ""
    echo "acl User:monitor TOPIC PREFIXED aifab. READ"
    echo "acl User:monitor GROUP PREFIXED aifab- DESCRIBE"
    # The CLI: `aifab demo` / `aifab produce` write raw records; `demo` and `consume` read
    # predictions and dead letters from groups of their own that never commit;
    # `aifab models promote|rollback` record what they change on the audit topic.
    kafka_grant cli "aifab.predictions aifab.dlq aifab.audit" "aifab.ingest.raw aifab.audit" \
        aifab-demo-tail- ""
    echo "acl User:cli GROUP PREFIXED aifab-cli-tail- READ"
}

# kafka_grant PRINCIPAL "READ_TOPICS" "WRITE_TOPICS" GROUP_PREFIX TXN_PREFIX
kafka_grant() {
    local p=User:$1 t
    for t in $2; do echo "acl $p TOPIC LITERAL $t READ"; done
    for t in $3; do echo "acl $p TOPIC LITERAL $t WRITE"; done
    [[ -z $4 ]] || echo "acl $p GROUP PREFIXED $4 READ"
    if [[ -n $5 ]]; then
        echo "acl $p TRANSACTIONAL_ID PREFIXED $5 WRITE"
        echo "acl $p TRANSACTIONAL_ID PREFIXED $5 DESCRIBE"
    fi
}

# NATS: the permissions object of a service's user. Anything not allowed is refused;
# only the trainer and the operator's CLI may announce models, only the cost-accountant
# and the CLI budgets, only the autoscaler scale decisions.
nats_permissions() {
    local pub sub
    case $1 in
    ingest) pub='[]' sub='["aifab.budget.exceeded"]' ;;
    feature) pub='[]' sub='[]' ;;
    inference-worker) pub='["aifab.alerts.model_verification"]' sub='["aifab.model.*"]' ;;
    trainer)
        pub='["aifab.train.progress", "aifab.model.published", "aifab.model.promoted"]'
        sub='["aifab.train.request"]'
        ;;
    monitor)
        pub='["aifab.lag.>", "aifab.alerts.>"]'
        sub='["aifab.scale.*", "aifab.replicas.*", "aifab.budget.*"]'
        ;;
    cost-accountant)
        pub='["aifab.budget.warning", "aifab.budget.exceeded", "aifab.budget.status"]'
        sub='["aifab.budget.set"]'
        ;;
    autoscaler)
        pub='["aifab.scale.>", "aifab.replicas.>"]'
        sub='["aifab.lag.>", "aifab.budget.*", "aifab.replicas.*"]'
        ;;
    cli)
        # the operator: train, promote/roll back, set budgets; `aifab up` follows scale
        # decisions and announces replica counts.
        pub='["aifab.train.request", "aifab.model.promoted", "aifab.model.rolled_back", "aifab.budget.set", "aifab.replicas.>"]'
        sub='["aifab.train.progress", "aifab.scale.*"]'
        ;;
    *) pub='[]' sub='[]' ;;
    esac
    printf '{ publish: %s, subscribe: %s }' "$(nats_allow "$pub")" "$(nats_allow "$sub")"
}

# An empty allow list means "no restriction" to nats-server: nothing allowed is a deny-all.
nats_allow() {
    if [[ $1 == '[]' ]]; then echo '{ deny: [">"] }'; else echo "{ allow: $1 }"; fi
}

# Redis: the ACL rules of a service's user (after `on #<password hash>`). Key patterns
# follow the default prefixes (`aifab`, the cost-accountant's `aifab:costs`); the model
# registry is aifab:registry:*, written by the trainer and the CLI, read by the others.
redis_permissions() {
    local base="resetchannels -@all +@read +@write +@scripting +@transaction +@connection -@dangerous"
    case $1 in
    ingest) echo "$base ~aifab:ingest:*" ;;
    feature) echo "$base ~aifab:feature:*" ;;
    inference-worker) echo "$base %R~aifab:registry:*" ;;
    trainer) echo "$base ~aifab:registry:*" ;;
    monitor) echo "$base +keys %R~aifab:registry:*" ;;
    cost-accountant) echo "$base ~aifab:costs:*" ;;
    cli) echo "$base +keys ~aifab:registry:* ~aifab:ingest:tenant:* ~aifab:ingest:apikey:*" ;;
    *) echo "resetchannels -@all +ping" ;;
    esac
}
