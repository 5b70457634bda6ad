#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker+controller) from Maven Central jars.
# Usage: kafka.sh start|stop|status|topics [EXTRA_TOPIC...]|run-class CLASS [ARGS...]
set -euo pipefail
STACK_NAME=kafka
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_VERSION=4.4.0
LOG4J_VERSION=2.25.5   # the log4j-core that kafka 4.4.0 depends on; adds its slf4j 1.x binding
TOPIC_PARTITIONS=6
# Record size limits, set together (docs/meta-ingress.md "Sizes"): the producer's max_request_size
# (ZAPTRIX_KAFKA_MAX_REQUEST_BYTES, 1 MiB) <= the topics' max.message.bytes = the broker's message.max.bytes
# (Kafka's default, 1 MiB + 12 bytes of batch overhead). Events are cut to fit well below (512 KiB).
MAX_MESSAGE_BYTES=1048588
# The project's topics (docs/ARCHITECTURE.md "Kafka topics").
TOPICS=(
  zaptrix.wa-to-b24.v1 zaptrix.wa-to-b24.retry.v1 zaptrix.wa-to-b24.dlq.v1
  zaptrix.b24-to-wa.v1 zaptrix.b24-to-wa.retry.v1 zaptrix.b24-to-wa.dlq.v1
  zaptrix.wa-history.v1 zaptrix.wa-history.retry.v1 zaptrix.wa-history.dlq.v1
  zaptrix.admin-audit.v1
)

KAFKA_HOME="$ZAPTRIX_CACHE/kafka/$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_DIR="$ZAPTRIX_STATE/kafka"
KAFKA_LOG="$KAFKA_DIR/server.log"        # log4j output
KAFKA_OUT="$KAFKA_DIR/console.log"       # JVM stdout/stderr (crashes, GC warnings)
KAFKA_PID="$KAFKA_DIR/kafka.pid"
KAFKA_JAVA_OPTS="${KAFKA_JAVA_OPTS:--Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError}"

# Client-side tools (storage format, topics, run-class): small heap, warnings to stderr.
kafka_tool() {
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$STACK_DIR/log4j2-tools.properties" -cp "$KAFKA_LIBS/*" "$@"
}

fetch() {
  [[ -f $KAFKA_LIBS/.complete ]] && return 0
  lock "kafka-$KAFKA_VERSION"
  [[ -f $KAFKA_LIBS/.complete ]] && return 0
  command -v java >/dev/null || die "java (17+) not found"
  command -v mvn >/dev/null || die "mvn not found"
  log "fetching kafka_2.13 $KAFKA_VERSION and its runtime dependencies (first time only)"
  mkdir -p "$KAFKA_HOME"
  cat >"$KAFKA_HOME/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.zaptrix</groupId><artifactId>kafka-dist</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- kafka-topics / console producer+consumer; connect-runtime is only for connect plugin tools -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version>
      <exclusions><exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion></exclusions>
    </dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$KAFKA_LIBS"
  mvn -B -Dstyle.color=never -f "$KAFKA_HOME/pom.xml" -Dmaven.repo.local="$ZAPTRIX_CACHE/m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" \
    >"$KAFKA_HOME/fetch.log" 2>&1 \
    || { tail -n 30 "$KAFKA_HOME/fetch.log" >&2; die "maven could not fetch kafka $KAFKA_VERSION, see $KAFKA_HOME/fetch.log"; }
  touch "$KAFKA_LIBS/.complete"
}

write_config() {
  mkdir -p "$KAFKA_DIR/data"
  cat >"$KAFKA_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=$TOPIC_PARTITIONS
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=$TOPIC_PARTITIONS
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=$TOPIC_PARTITIONS
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=$MAX_MESSAGE_BYTES
PROPS
  cat >"$KAFKA_DIR/log4j2.properties" <<LOG4J
status = warn
shutdownHook = disable
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $KAFKA_LOG
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
LOG4J
}

running() { pid_alive "$KAFKA_PID" kafka.Kafka; }
ready() { running && port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null; }

start() {
  if running; then
    wait_until 60 "$KAFKA_LOG" "kafka on 127.0.0.1:$KAFKA_PORT" ready_or_dead
    log "already running on 127.0.0.1:$KAFKA_PORT"; return 0
  fi
  local p
  if ! [[ $(java -XshowSettings:properties -version 2>&1) =~ java\.specification\.version\ =\ ([0-9]+) ]] \
    || ((BASH_REMATCH[1] < 17)); then
    die "Kafka $KAFKA_VERSION needs Java 17 or newer (java on PATH: $(command -v java))"
  fi
  fetch
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_open "$p" && die "port $p is taken by another process (set KAFKA_PORT)"
  done
  write_config
  if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
    local id=-
    # Kafka's own rule (Uuid.randomUuid): 22 url-safe base64 chars, not starting with '-'.
    while [[ $id == -* ]]; do id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22); done
    log "formatting storage in $KAFKA_DIR/data (cluster id $id)"
    kafka_tool kafka.tools.StorageTool format --cluster-id="$id" --config "$KAFKA_DIR/server.properties" \
      >"$KAFKA_DIR/format.log" 2>&1 || { cat "$KAFKA_DIR/format.log" >&2; die "storage format failed"; }
  fi
  if [[ -f $KAFKA_LOG ]]; then mv -f "$KAFKA_LOG" "$KAFKA_LOG.prev"; fi
  log "starting on 127.0.0.1:$KAFKA_PORT, controller :$KAFKA_CONTROLLER_PORT (log: $KAFKA_LOG)"
  # setsid: the broker must not die with the terminal or make job that started it.
  # shellcheck disable=SC2086
  setsid java $KAFKA_JAVA_OPTS -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$KAFKA_DIR/server.properties" </dev/null >>"$KAFKA_OUT" 2>&1 &
  echo $! >"$KAFKA_PID"
  wait_until 90 "$KAFKA_LOG" "kafka on 127.0.0.1:$KAFKA_PORT" ready_or_dead
  log "ready: bootstrap 127.0.0.1:$KAFKA_PORT"
}

# Used while waiting: fails at once when the broker process has died.
ready_or_dead() {
  ready && return 0
  running && return 1
  tail -n 20 "$KAFKA_OUT" "$KAFKA_LOG" >&2 2>/dev/null || true
  die "kafka exited during startup, see $KAFKA_LOG and $KAFKA_OUT"
}

stop() { stop_pid "$KAFKA_PID" kafka kafka.Kafka 30; }

status() {
  if ready; then echo "kafka: running on 127.0.0.1:$KAFKA_PORT (pid $(<"$KAFKA_PID"), log $KAFKA_LOG)"
  elif running; then echo "kafka: starting (pid $(<"$KAFKA_PID"), log $KAFKA_LOG)"; return 1
  else echo "kafka: stopped"; return 1; fi
}

topics() {
  ready || die "kafka is not running (kafka.sh start)"
  # Single node: a topic exists when partition 0 has a directory in log.dirs. Saves a JVM start.
  local t missing=false
  for t in "${TOPICS[@]}" "$@"; do [[ -d $KAFKA_DIR/data/$t-0 ]] || missing=true; done
  if ! $missing; then log "topics present: ${TOPICS[*]} $*"; return 0; fi
  log "ensuring topics (${TOPIC_PARTITIONS} partitions): ${TOPICS[*]} $*"
  KAFKA_TOPIC_MAX_MESSAGE_BYTES=$MAX_MESSAGE_BYTES kafka_tool "$STACK_DIR/KafkaTopics.java" "127.0.0.1:$KAFKA_PORT" "$TOPIC_PARTITIONS" "${TOPICS[@]}" "$@"
}

case "${1:-}" in
  start | stop | status) "$1" ;;
  topics) shift; topics "$@" ;;
  run-class) shift; fetch; kafka_tool "$@" ;;
  *) echo "usage: $0 start|stop|status|topics [EXTRA_TOPIC...]|run-class CLASS [ARGS...]" >&2; exit 2 ;;
esac
