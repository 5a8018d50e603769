#!/usr/bin/env bash
# The tuned study's grid in the background, from a git worktree pinned to one commit, so that edits to
# this checkout never change a running member; its completed records are copied back and committed here.
#
#   bash experiments/study_background.sh start [REF]   # pin the worktree to REF (default HEAD), set it up,
#                                                      # start `make study-queue` there and the sync loop
#   bash experiments/study_background.sh sync          # once: copy completed records, re-render, commit
#   bash experiments/study_background.sh sync-loop     # `sync` every $SYNC_SECONDS (default 600)
#   bash experiments/study_background.sh stop          # stop the queue, its members and the sync loop, then
#                                                      # sync once; a stopped member resumes from its last
#                                                      # checkpoint at the next `start`
#
# The worktree is $STUDY_GRID_DIR (default ../grid beside this checkout). Its queue's log is
# $STUDY_GRID_DIR.queue.log and the sync loop's $STUDY_GRID_DIR.sync.log. A member is copied once both its
# record (.json) and its predictions exist; the commit holds results/study only, nothing else staged here.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GRID="${STUDY_GRID_DIR:-$(dirname "$ROOT")/grid}"
SYNC_SECONDS="${SYNC_SECONDS:-600}"
FOLDERS=(results/study/runs results/study/webq/runs results/study/webq_check)

sync_once() {
  cd "$ROOT"
  local copied=0 src dst json base
  for folder in "${FOLDERS[@]}"; do
    src="$GRID/$folder" dst="$ROOT/$folder"
    [ -d "$src" ] || continue
    mkdir -p "$dst"
    for json in "$src"/*.json; do
      [ -e "$json" ] || continue
      base="$(basename "$json" .json)"
      if [ -e "$dst/$base.json" ] || [ ! -e "$src/$base.predictions.jsonl.gz" ]; then continue; fi
      cp "$src/$base.predictions.jsonl.gz" "$dst/" && cp "$json" "$dst/"   # the record last: it marks a copy
      echo "$(date -u +%FT%TZ) copied $folder/$base"
      copied=$((copied + 1))
    done
  done
  # only new records start a commit: a report re-rendered by hand in this checkout is its author's to commit
  [ -n "$(git status --porcelain -- "${FOLDERS[@]}")" ] || return 0
  nice -n 10 "$ROOT/.venv/bin/python" -m hizfo.study.tuned > /dev/null
  local n; n="$(find results/study/runs -maxdepth 1 -name '*.json' | wc -l)"
  git add -- results/study
  git diff --cached --quiet -- results/study && return 0   # someone committed them meanwhile
  git commit --quiet -m "Study records: $n completed members of the tuned study; results/study re-rendered" \
    -- results/study && echo "$(date -u +%FT%TZ) committed ($n DialogSum members; $copied new record(s) copied)"
}

start() {
  local ref="${1:-HEAD}" commit
  commit="$(git -C "$ROOT" rev-parse --verify "$ref^{commit}")"
  if pgrep -f "experiments/study_queue.py" > /dev/null; then
    echo "a study queue is already running (pgrep -f experiments/study_queue.py); stop it first" >&2
    exit 1
  fi
  git -C "$ROOT" worktree prune
  if [ -d "$GRID" ]; then
    # its untracked records are copies of what is committed or to be synced: sync first, then re-pin
    sync_once
    git -C "$GRID" clean --quiet -fd -- results/study
    # --force: the worktree's own edits go (its queue's re-rendered report, a queue line held by hand)
    git -C "$GRID" checkout --quiet --force --detach "$commit"
  else
    git -C "$ROOT" worktree add --quiet --detach "$GRID" "$commit"
  fi
  [ -x "$ROOT/.venv/bin/python" ] || make -C "$ROOT" setup
  nice -n 5 make -C "$GRID" setup model
  # a member interrupted at the last session's end resumes from its checkpoint, unless the new commit
  # changed a source file it imports: then its checkpoint is moved aside and it starts over
  (cd "$GRID" && .venv/bin/python experiments/stale_checkpoints.py --move-aside checkpoints/study checkpoints/study_webq)
  # the redirections hold for the whole detached subshell, so no caller's pipe is kept open
  (cd "$GRID" && exec setsid nohup make study-queue) > "$GRID.queue.log" 2>&1 < /dev/null &
  (exec setsid nohup bash "$ROOT/experiments/study_background.sh" sync-loop) > "$GRID.sync.log" 2>&1 < /dev/null &
  echo "study queue at $(git -C "$GRID" log -1 --format='%h %s' | cut -c1-80) in $GRID"
  echo "logs: $GRID.queue.log (queue), $GRID.sync.log (records committed to $ROOT every ${SYNC_SECONDS}s)"
}

# the queue started from $GRID: its process runs there (another checkout's queue is left alone)
grid_queues() {
  local pid
  for pid in $(pgrep -f "experiments/study_queue.py"); do
    [ "$(readlink "/proc/$pid/cwd")" = "$GRID" ] && echo "$pid"
  done
  return 0
}

# the sync loop of this checkout: its first sync moved it here (another checkout's loop is left alone)
sync_loops() {
  local pid here
  here="$(cd "$ROOT" && pwd -P)"
  for pid in $(pgrep -f "study_background.sh sync-loop"); do
    [ "$(readlink "/proc/$pid/cwd")" = "$here" ] && echo "$pid"
  done
  return 0
}

stop() {
  local pid sid sids=() waited
  # the queue's shell and its python share one session
  for sid in $(for pid in $(grid_queues); do ps -o sid= -p "$pid"; done | sort -u); do sids+=("$sid"); done
  # the sync loop first, so it does not commit while the queue stops (a sync under way finishes)
  for pid in $(sync_loops); do kill -TERM "$pid" 2>/dev/null || true; done
  if [ "${#sids[@]}" -eq 0 ]; then
    echo "no study queue runs from $GRID"
  else
    # `start` runs the queue under setsid: its session holds make, the queue and every member
    for sid in "${sids[@]}"; do pkill -TERM -s "$sid" || true; done
    for waited in $(seq 30); do
      [ -z "$(for sid in "${sids[@]}"; do pgrep -s "$sid"; done)" ] && break
      sleep 1
    done
    for sid in "${sids[@]}"; do pkill -KILL -s "$sid" || true; done
    echo "stopped the study queue in $GRID (session ${sids[*]}); its members resume from their checkpoints at the next start"
  fi
  sync_once
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  sync) sync_once ;;
  sync-loop) while true; do sync_once || echo "$(date -u +%FT%TZ) sync failed (retrying)"; sleep "$SYNC_SECONDS"; done ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
