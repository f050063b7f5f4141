#!/usr/bin/env bash
# run_brokers.sh - trainbus side by side with redis-server, nats-server and
# mosquitto on loopback (issue 5, "Benchmarks"), in one run.
#
# Adapted from shared/bench/brokers/run-all.sh: installs the Debian packages
# when root and missing, starts the brokers on high 127.0.0.1 ports and stops
# them (and every trainbusd it started) by PID. Rounds are interleaved across
# brokers so machine noise hits all of them alike; tables give medians.
#
#   1. fan-out throughput, blast, K = 1, 8, 64 (psbench tput); trainbus is
#      also run closed-loop (-w WIN: the trainer stays at most WIN events ahead
#      of the slowest subscriber), its lossless capacity;
#   2. publish->receive latency at RATE events/s, K = 1, 8 (psbench lat),
#      trainbus with its default settings;
#   3. trainbusd only: set_lr round trip, training slowdown with 8
#      subscribers to every event (default settings, and with the old fixed
#      --flush-interval-ms 1 for comparison), memory idle / with 10,000
#      subscribers / with a never-reading subscriber; and memory per idle
#      subscriber of the three brokers for comparison.
#   4. the issue-13 targets as trainbus / Redis ratios (summarize_tb.py).
#
# trainbus's CPU is reported twice: the whole tb_pub process (the trainer
# thread, which also runs the publisher callback, plus the server's loop
# thread) and the loop thread alone, which does what a broker's server
# process does (encode, fan out, write); Redis's is its server process.
#
#   bash tests/bench/brokers/run_brokers.sh
#   RUNS=3 RATE=10000 DUR=3 KS="1 8 64" BUILD=build-brokers bash ...
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
RUNS=${RUNS:-3}
RATE=${RATE:-10000}
DUR=${DUR:-3}
KS=${KS:-"1 8 64"}
LAT_KS=${LAT_KS:-"1 8"}
WIN=${WIN:-1000}
IDLE_K=${IDLE_K:-10000}
TRAIN_ROUNDS=${TRAIN_ROUNDS:-5}
BUILD=${BUILD:-$ROOT/build-brokers}
REDIS_PORT=${REDIS_PORT:-16379}
NATS_PORT=${NATS_PORT:-14222}
MQTT_PORT=${MQTT_PORT:-18830}
TB_PORT=${TB_PORT:-17787}
OUT=${OUT:-$BUILD/brokers-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RAW=$OUT/raw.txt
: > "$RAW"

# Events per run by K: enough deliveries to time, few enough that mosquitto
# (~50k deliveries/s) keeps the whole script near 10 minutes.
n_for_k() { case $1 in 1) echo 200000 ;; 8) echo 100000 ;; *) echo 20000 ;; esac; }

need=()
for b in redis-server nats-server mosquitto; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || need+=("$b")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then echo "missing: ${need[*]} (run as root to install)" >&2; exit 1; fi
    echo "missing: ${need[*]}; installing Debian packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        redis-server redis-tools mosquitto mosquitto-clients nats-server >/dev/null
fi
export PATH=$PATH:/usr/sbin
# 10,000 subscribers need as many descriptors in the brokers and in psbench.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$BUILD" -j2 --target psbench tb_pub tb_ctl trainbusd >/dev/null
BIN=$BUILD/tests/bench/brokers
PSB=$BIN/psbench
TBD=$BUILD/trainbusd

for p in $REDIS_PORT $NATS_PORT $MQTT_PORT $TB_PORT; do
    if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
        echo "port $p already in use on 127.0.0.1; set *_PORT" >&2
        exit 1
    fi
done

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2
    exit 1
}

# --- brokers, loopback only -------------------------------------------------
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
    --save '' --appendonly no --maxclients 20000 --logfile "$OUT/redis.log" &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
nats-server -a 127.0.0.1 -p "$NATS_PORT" -l "$OUT/nats.log" &
NATS_PID=$!; PIDS+=("$NATS_PID")
cat > "$OUT/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
log_dest file $OUT/mosquitto.log
log_type error
log_type warning
EOF
mosquitto -c "$OUT/mosquitto.conf" &
MQTT_PID=$!; PIDS+=("$MQTT_PID")
for p in $REDIS_PORT $NATS_PORT $MQTT_PORT; do wait_port "$p"; done

{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(nproc) cpus, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "redis: $(redis-server --version)"
    echo "nats: $(nats-server --version)"
    echo "mosquitto: $(mosquitto -h 2>&1 | head -1)"
    echo "trainbus: $(git -C "$ROOT" rev-parse --short HEAD) $(git -C "$ROOT" status --short server core protocol | wc -l) files modified in server/ core/ protocol/"
    echo "params: RUNS=$RUNS RATE=$RATE DUR=$DUR KS=$KS LAT_KS=$LAT_KS WIN=$WIN IDLE_K=$IDLE_K"
} | tee "$OUT/env.txt"

bench() {   # bench TAG psbench-args...
    local tag=$1; shift
    local line
    if line=$(timeout 200 "$PSB" -t "$tag" -T 150 "$@"); then
        echo "run=$r $line" | tee -a "$RAW"
    else
        echo "run=$r tag=$tag FAILED rc=$? args=$*" | tee -a "$RAW" >&2
    fi
}

for r in $(seq 1 "$RUNS"); do
    for k in $KS; do
        n=$(n_for_k "$k")
        bench direct      -P direct -k "$k" -n "$n"
        bench redis       -P redis -p "$REDIS_PORT" -b "$REDIS_PID" -k "$k" -n "$n"
        bench nats        -P nats  -p "$NATS_PORT"  -b "$NATS_PID"  -k "$k" -n "$n"
        bench mosquitto   -P mqtt  -p "$MQTT_PORT"  -b "$MQTT_PID"  -k "$k" -n "$n"
        bench trainbus    -P trainbus -x "$BIN/tb_pub" -k "$k" -n "$n"
        bench trainbus-w  -P trainbus -x "$BIN/tb_pub" -k "$k" -n "$n" -w "$WIN"
    done
    for k in $LAT_KS; do
        bench direct    -P direct -m lat -k "$k" -r "$RATE" -d "$DUR"
        bench redis     -P redis -p "$REDIS_PORT" -b "$REDIS_PID" -m lat -k "$k" -r "$RATE" -d "$DUR"
        bench nats      -P nats  -p "$NATS_PORT"  -b "$NATS_PID"  -m lat -k "$k" -r "$RATE" -d "$DUR"
        bench mosquitto -P mqtt  -p "$MQTT_PORT"  -b "$MQTT_PID"  -m lat -k "$k" -r "$RATE" -d "$DUR"
        bench trainbus  -P trainbus -x "$BIN/tb_pub" -m lat -k "$k" -r "$RATE" -d "$DUR"
    done
done

# --- memory per idle subscriber: the brokers ----------------------------------
r=mem
bench redis     -P redis -p "$REDIS_PORT" -b "$REDIS_PID" -m idle -k "$IDLE_K"
bench nats      -P nats  -p "$NATS_PORT"  -b "$NATS_PID"  -m idle -k "$IDLE_K"
bench mosquitto -P mqtt  -p "$MQTT_PORT"  -b "$MQTT_PID"  -m idle -k "$IDLE_K"
cleanup

# --- trainbusd: a real daemon ------------------------------------------------------
TOKEN=bench-$$
start_tbd() {   # start_tbd EXTRA-ARGS...: sets TBD_PID
    "$TBD" --no-state --listen "127.0.0.1:$TB_PORT" --token "$TOKEN" --quiet "$@" \
        2>>"$OUT/trainbusd.log" &
    TBD_PID=$!; PIDS+=("$TBD_PID")
    wait_port "$TB_PORT"
}

# Jobs: the demo job (tiny batches: the most events per second a real job
# makes) and a wider MLP whose batches take about a millisecond.
job() {   # job NAME UNITS BATCH EPOCHS
    cat > "$OUT/job-$1.json" <<EOF
{"name":"bench-$1","seed":42,"threads":1,
 "data":{"source":"spirals","n_per_class":2000,"noise":0.15,"scale":"standard"},
 "model":{"layers":[{"type":"dense","units":$2,"activation":"relu"},{"type":"dense","units":$2,"activation":"relu"},{"type":"dropout","rate":0.1},{"type":"dense","units":2,"activation":"softmax"}]},
 "loss":"sparse_categorical_crossentropy","metrics":["accuracy"],
 "optimizer":{"name":"adam","learning_rate":0.003},"epochs":$4,"batch_size":$3,"validation_split":0.2,"verbose":0}
EOF
}
job demo 128 32 60
job mlp512 512 64 12
job setlr 128 32 100000
job stall 128 32 200

# Memory: idle daemon, then IDLE_K idle subscribers.
start_tbd --no-job
r=mem
bench trainbus -P trainbus -p "$TB_PORT" -b "$TBD_PID" -m idle -k "$IDLE_K"
# Training slowdown, demo job and the wider MLP, then the stalled client.
"$BIN/tb_ctl" train -a "127.0.0.1:$TB_PORT" -t "$TOKEN" -j "$OUT/job-demo.json" -k 8 \
    -R "$TRAIN_ROUNDS" -b "$TBD_PID" | sed 's/^/job=demo /' | tee -a "$OUT/trainbus.txt"
"$BIN/tb_ctl" train -a "127.0.0.1:$TB_PORT" -t "$TOKEN" -j "$OUT/job-mlp512.json" -k 8 \
    -R "$TRAIN_ROUNDS" -b "$TBD_PID" | sed 's/^/job=mlp512 /' | tee -a "$OUT/trainbus.txt"
cleanup
# The same demo job with the old fixed coalescing delay, for comparison.
start_tbd --no-job --flush-interval-ms 1
"$BIN/tb_ctl" train -a "127.0.0.1:$TB_PORT" -t "$TOKEN" -j "$OUT/job-demo.json" -k 8 \
    -R "$TRAIN_ROUNDS" -b "$TBD_PID" | sed 's/^/job=demo-flush1ms /' | tee -a "$OUT/trainbus.txt"
cleanup
start_tbd --no-job
"$BIN/tb_ctl" stall -a "127.0.0.1:$TB_PORT" -t "$TOKEN" -j "$OUT/job-stall.json" -b "$TBD_PID" \
    | tee -a "$OUT/trainbus.txt"
cleanup

# set_lr round trip on a running job (demo model, long), then stop the daemon.
start_tbd --job "$OUT/job-setlr.json"
sleep 1
"$BIN/tb_ctl" setlr -a "127.0.0.1:$TB_PORT" -t "$TOKEN" -n 300 | sed 's/^setlr/setlr job=demo/' \
    | tee -a "$OUT/trainbus.txt"
cleanup
sed -i 's/"units":128/"units":512/g; s/"batch_size":32/"batch_size":64/' "$OUT/job-setlr.json"
start_tbd --job "$OUT/job-setlr.json"
sleep 1
"$BIN/tb_ctl" setlr -a "127.0.0.1:$TB_PORT" -t "$TOKEN" -n 300 | sed 's/^setlr/setlr job=mlp512/' \
    | tee -a "$OUT/trainbus.txt"
cleanup

CMD="RUNS=$RUNS bash tests/bench/brokers/run_brokers.sh"
python3 "$HERE/summarize_tb.py" "$RAW" "$OUT/trainbus.txt" "$CMD" > "$OUT/summary.md"
{ echo; echo '```'; cat "$OUT/env.txt"; echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"; echo '```'; } >> "$OUT/summary.md"
cat "$OUT/summary.md"
echo "results in $OUT"
