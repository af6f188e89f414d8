#!/usr/bin/env sh
# `make container-smoke`: build the image, run Data Bank, API and worker containers against a
# Redis, train a tiny tokenizer and model through the API, check the artifact pointer and
# /readyz, clean up. Uses docker when an engine answers, otherwise podman (on a machine
# without a Docker engine, ../shared/tools/container-env.sh sets podman up).
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
IMAGE=model-trainer:smoke
PY=${PY:-$ROOT/.venv/bin/python}
started=$(date +%s)

if docker info >/dev/null 2>&1; then
  BUILD="docker build"
  RUN="docker run --rm -d --network host"
  ENGINE=docker
else
  if [ -f ../shared/tools/container-env.sh ]; then
    # shellcheck disable=SC1091
    . ../shared/tools/container-env.sh >/dev/null
  fi
  command -v podman >/dev/null 2>&1 || { echo "smoke: no docker engine and no podman"; exit 1; }
  BUILD=${PODMAN_BUILD:-podman build}
  RUN="$(echo "${PODMAN_RUN:-podman run --rm --network host}" | sed 's/ run --rm/ run --rm -d/')"
  ENGINE=podman
fi
case "$ENGINE" in docker) CLI=docker ;; *) CLI=podman ;; esac

BUILD_ARGS=""
[ -n "${TORCH_INDEX_URL+x}" ] && BUILD_ARGS="$BUILD_ARGS --build-arg TORCH_INDEX_URL=$TORCH_INDEX_URL"
if [ "$ENGINE" = podman ] && echo "$BUILD" | grep -q "/wheels"; then
  # This machine: the CPU torch wheel is on disk (mounted at /wheels); PyTorch's index is not
  # reachable from here.
  BUILD_ARGS="$BUILD_ARGS --build-arg PIP_FIND_LINKS=/wheels --build-arg TORCH_INDEX_URL="
fi

echo "smoke: building $IMAGE with $ENGINE"
build_started=$(date +%s)
# shellcheck disable=SC2086
$BUILD $BUILD_ARGS -f server/Dockerfile -t "$IMAGE" . >/tmp/smoke-build.log 2>&1 || {
  tail -n 40 /tmp/smoke-build.log; exit 1; }
build_seconds=$(( $(date +%s) - build_started ))
size=$($CLI image inspect "$IMAGE" --format '{{.Size}}')
echo "smoke: built in ${build_seconds}s, image size $(( size / 1024 / 1024 )) MiB"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port); BANK_PORT=$(free_port); REDIS_PORT=$(free_port)
# A redis-server of our own (never the one in REDIS_URL: that is somebody's data).
command -v redis-server >/dev/null 2>&1 || { echo "smoke: redis-server is not installed"; exit 1; }
REDIS_DIR=$(mktemp -d)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" \
  --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
QUEUE="smoke-$(date +%s)"
BANK_KEY="smoke-$(date +%s)-key"
# The API refuses to start without a key (closed by default): it gets one of its own.
API_KEY="smoke-$(date +%s)-api-key"
containers=""
cleanup() {
  for c in $containers; do $CLI rm -f "$c" >/dev/null 2>&1 || true; done
  [ -f "$REDIS_DIR/redis.pid" ] && kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
  rm -rf "$REDIS_DIR"
}
trap cleanup EXIT INT TERM

common="-e REDIS_URL=$REDIS_URL -e RQ__QUEUE_NAME=$QUEUE -e APP__DATA_BANK_API_URL=http://127.0.0.1:$BANK_PORT -e APP__DATA_BANK_API_KEY=$BANK_KEY"
bank=$($RUN -e DATA_ROOT=/data/files -e MIN_FREE_GB=0 -e API_UPLOAD_KEYS="$BANK_KEY" \
  "$IMAGE" modeltrainer-databank --host 127.0.0.1 --port "$BANK_PORT")
containers="$containers $bank"
# shellcheck disable=SC2086
api=$($RUN $common -e PORT="$API_PORT" -e SECURITY__API_KEY="$API_KEY" "$IMAGE")
containers="$containers $api"
# shellcheck disable=SC2086
worker=$($RUN $common -e APP__THREADS=2 "$IMAGE" modeltrainer-rq-worker)
containers="$containers $worker"

"$PY" - "$API_PORT" "$BANK_PORT" "$BANK_KEY" "$API_KEY" <<'PY'
import sys, time, httpx
api, bank, key = (f"http://127.0.0.1:{sys.argv[1]}", f"http://127.0.0.1:{sys.argv[2]}", sys.argv[3])
client = httpx.Client(headers={"X-API-Key": sys.argv[4]}, timeout=30)  # the API key on each call

def wait(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    sys.exit(f"smoke: timed out waiting for {what}")

wait("api /readyz 200", lambda: client.get(f"{api}/readyz").status_code == 200, 180)
print("smoke: /readyz", client.get(f"{api}/readyz").json())
keyless = client.get(f"{api}/runs", headers={"X-API-Key": ""}).status_code
print("smoke: GET /runs without a key:", keyless)
assert keyless == 401, keyless
text = "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 17}" for i in range(3000))
up = client.post(f"{bank}/files", headers={"X-API-Key": key}, files={"file": ("c.txt", text.encode())})
up.raise_for_status()
corpus = up.json()["file_id"]
tok = client.post(f"{api}/tokenizers/train", json={"method": "bpe", "vocab_size": 300, "corpus_file_id": corpus}).json()
tid = tok["tokenizer_id"]
wait("tokenizer", lambda: client.get(f"{api}/tokenizers/{tid}").json()["status"] in ("completed", "failed"), 300)
print("smoke: tokenizer", client.get(f"{api}/tokenizers/{tid}").json()["status"])
body = {"corpus_file_id": corpus, "tokenizer_id": tid, "model_size": "tiny", "max_steps": 30,
        "max_seq_len": 32, "batch_size": 8, "eval_interval": 10, "checkpoint_interval": 10}
run = client.post(f"{api}/runs/train", json=body).json()
rid = run["run_id"]
wait("run", lambda: client.get(f"{api}/runs/{rid}").json()["status"] in ("completed", "failed"), 600)
final = client.get(f"{api}/runs/{rid}").json()
print("smoke: run", final["status"], final.get("message"))
pointer = client.get(f"{api}/runs/{rid}/artifact")
print("smoke: artifact pointer", pointer.status_code, pointer.json())
head = client.head(f"{bank}/files/{pointer.json()['file_id']}", headers={"X-API-Key": key})
print("smoke: artifact in data bank:", head.status_code, head.headers.get("content-length"), "bytes")
ok = final["status"] == "completed" and pointer.status_code == 200 and head.status_code == 200
sys.exit(0 if ok else 1)
PY
echo "smoke: passed in $(( $(date +%s) - started ))s (build ${build_seconds}s, image $(( size / 1024 / 1024 )) MiB)"
