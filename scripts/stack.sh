#!/usr/bin/env bash
# The local stack: S3 server (SeaweedFS from the venv), gunicorn on 127.0.0.1:8000, a Celery worker with beat.
# Usage: scripts/stack.sh up|down|status|demo|test|bench. Every command is idempotent.
# DEBUG stays off unless you export DEBUG=1. Secrets are generated once into .var/secrets.json (0600) by
# scripts/local_secrets.py; config/settings.py reads them from there for whichever is not exported.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
VAR="$ROOT/.var"
RUN="$VAR/run"
LOG="$VAR/log"
mkdir -p "$RUN" "$LOG"
export DATABASE_URL=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/llm_registry}
export CELERY_BROKER_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}
export WEB_HOST=${WEB_HOST:-127.0.0.1}
export WEB_PORT=${WEB_PORT:-8000}
# The checkout's SeaweedFS: GOVERNANCE retention, so what the demo and benchmarks store can be cleaned up.
export REPORT_RETENTION_MODE=${REPORT_RETENTION_MODE:-GOVERNANCE}
export PYTHONUNBUFFERED=1
# /metrics: the web's workers share their request metrics through this directory (emptied at each web start);
# the local stack lets a scraper on this host read them without a token. Only the web process gets these.
METRICS_DIR=${PROMETHEUS_MULTIPROC_DIR:-$VAR/prometheus}
METRICS_NETWORKS=${METRICS_ALLOWED_NETWORKS:-127.0.0.1/32}
BASE_URL="http://$WEB_HOST:$WEB_PORT"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

s3_env() {
  if [ -z "${S3_ENDPOINT:-}" ]; then
    "$PY" scripts/s3server.py start
    eval "$("$PY" scripts/s3server.py env)"
  fi
}

# SECRET_KEY and REPORT_PKI_PASSPHRASE, generated on first start (prints the file's name, never a secret).
ensure_secrets() { "$PY" scripts/local_secrets.py ensure; }

up() {
  ensure_secrets
  s3_env
  "$PY" scripts/ensure_database.py
  "$PY" manage.py migrate --noinput -v0
  "$PY" manage.py collectstatic --noinput -v0
  # The PKI that signs reports (REPORT_PKI_AUTO_CREATE is off): created once, kept afterwards.
  "$PY" manage.py init_pki >/dev/null
  if alive "$RUN/web.pid"; then
    echo "web already running (pid $(cat "$RUN/web.pid"))"
  else
    rm -rf "$METRICS_DIR" && mkdir -p "$METRICS_DIR"
    # Every gunicorn option but these lives in config/gunicorn.conf.py (keep-alive, worker recycling, timeouts).
    # No per-request access log unless WEB_ACCESS_LOG=1: writing it cost ~9 % of the web CPU of a version create,
    # and every request is counted in /metrics, every write recorded in the audit trail.
    local access_log=()
    [ "${WEB_ACCESS_LOG:-0}" = "1" ] && access_log=(--access-logfile "$LOG/web-access.log")
    PROMETHEUS_MULTIPROC_DIR="$METRICS_DIR" METRICS_ALLOWED_NETWORKS="$METRICS_NETWORKS" \
      "$ROOT/.venv/bin/gunicorn" -c config/gunicorn.conf.py --bind "$WEB_HOST:$WEB_PORT" --pid "$RUN/web.pid" \
      --daemon "${access_log[@]}" --error-logfile "$LOG/web.log"
  fi
  if alive "$RUN/worker.pid"; then
    echo "worker already running (pid $(cat "$RUN/worker.pid"))"
  else
    local queues="cpu"
    [ -n "${GPU_QUEUE:-}" ] && queues="cpu,$GPU_QUEUE"
    # -B: beat runs inside this one worker and sends the periodic tasks of CELERY_BEAT_SCHEDULE.
    "$ROOT/.venv/bin/celery" -A config worker -B --schedule "$RUN/celerybeat-schedule" --queues "$queues" \
      --concurrency 1 --loglevel INFO --pidfile "$RUN/worker.pid" --logfile "$LOG/worker.log" --detach
  fi
  for _ in $(seq 1 60); do
    if curl -fsS "$BASE_URL/healthz" >/dev/null 2>&1; then
      echo "Stack is up. Base URL: $BASE_URL  (admin: $BASE_URL/admin/, API docs: $BASE_URL/api/docs/)"
      echo "Logs: $LOG   Stop with: make down"
      return 0
    fi
    sleep 1
  done
  echo "The web server did not become healthy; see $LOG/web.log:" >&2
  tail -n 30 "$LOG/web.log" >&2 || true
  curl -sS "$BASE_URL/healthz" >&2 || true
  exit 1
}

stop_pidfile() {
  local name=$1 file="$RUN/$1.pid"
  if alive "$file"; then
    local pid
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "stopped $name"
  fi
  rm -f "$file"
}

down() {
  stop_pidfile worker
  stop_pidfile web
  "$PY" scripts/s3server.py stop
}

status() {
  alive "$RUN/web.pid" && echo "web: running at $BASE_URL" || echo "web: stopped"
  alive "$RUN/worker.pid" && echo "worker: running" || echo "worker: stopped"
  "$PY" scripts/s3server.py status || true
}

demo() {
  ensure_secrets
  s3_env
  "$PY" manage.py demo --base-url "$BASE_URL"
  echo
  echo "The service stays up at $BASE_URL (web and worker run in the background). Stop it with: make down"
}

run_tests() {
  # The suite starts its own S3 server (tests/settings.py) and Celery workers; Postgres and Redis are local.
  "$PY" -m pytest -q --durations=40 "$@"
}

bench() {
  ensure_secrets
  s3_env
  local failed=0
  for script in bench/upload.py bench/quantize.py bench/analysis.py bench/lora.py bench/rollback.py bench/api.py bench/report.py \
      bench/load.py bench/pii.py bench/evaluation.py; do
    [ -f "$script" ] || continue
    echo "== $script"
    "$PY" "$script" || failed=1
  done
  # The upload benchmark writes and deletes gigabytes; SeaweedFS frees that space only when compacted.
  "$PY" scripts/s3server.py vacuum || true
  return $failed
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  demo) demo ;;
  test) shift; run_tests "$@" ;;
  bench) bench ;;
  *) echo "usage: $0 up|down|status|demo|test|bench" >&2; exit 2 ;;
esac
