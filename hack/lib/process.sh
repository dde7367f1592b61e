# shellcheck shell=bash
# Long-running processes of a state folder, shared by hack/control-plane.sh (and the
# hack/node.sh it sources) and hack/multi-host.sh. Sourced, never run. A process folder
# DIR holds logs/NAME.log (appended to by every start, so a restart keeps the log of the
# run before, e.g. a crash) and pids/NAME.pid ("PID STARTTIME": the start time guards
# against PID reuse). The caller defines log MESSAGE.

# proc_starttime PID : field 22 of /proc/PID/stat (after the parenthesised comm, which may
# hold spaces); fails if PID does not exist.
proc_starttime() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  # shellcheck disable=SC2086
  set -- ${stat}
  echo "${20}"
}

# proc_start DIR NAME CMD... : runs CMD in its own session with output appended to
# DIR/logs/NAME.log and records it in DIR/pids/NAME.pid.
proc_start() {
  local dir="$1" name="$2"
  shift 2
  echo "---- ${name} started $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"${dir}/logs/${name}.log"
  setsid "$@" >>"${dir}/logs/${name}.log" 2>&1 </dev/null &
  local pid=$!
  local st
  st="$(proc_starttime "${pid}" || echo 0)"
  echo "${pid} ${st}" >"${dir}/pids/${name}.pid"
}

# proc_alive DIR NAME : true while the process recorded for NAME is running (and is still
# ours).
proc_alive() {
  local f="$1/pids/$2.pid" pid st now
  [[ -f "${f}" ]] || return 1
  read -r pid st <"${f}" || return 1
  now="$(proc_starttime "${pid}")" || return 1
  [[ "${st}" == "0" || "${now}" == "${st}" ]] || return 1
  # A zombie is as good as dead.
  [[ "$(awk '/^State:/ {print $2}' "/proc/${pid}/status" 2>/dev/null)" != "Z" ]]
}

# proc_stop DIR NAME SIGNAL GRACE LABEL : send SIGNAL to NAME's process group, SIGKILL after
# GRACE seconds, and forget its pid file. LABEL names the process in log lines.
proc_stop() {
  local dir="$1" name="$2" signal="$3" grace="$4" label="$5" f pid st
  f="${dir}/pids/${name}.pid"
  [[ -f "${f}" ]] || return 0
  read -r pid st <"${f}" || true
  if proc_alive "${dir}" "${name}"; then
    # Each process leads its own session/process group: signal the whole group.
    kill "-${signal}" -- "-${pid}" 2>/dev/null || kill "-${signal}" "${pid}" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while proc_alive "${dir}" "${name}" && ((SECONDS < deadline)); do sleep 0.2; done
    if proc_alive "${dir}" "${name}"; then
      log "${label} (pid ${pid}) ignored SIG${signal} for ${grace}s; sending SIGKILL"
      kill -KILL -- "-${pid}" 2>/dev/null || kill -KILL "${pid}" 2>/dev/null || true
      while proc_alive "${dir}" "${name}"; do sleep 0.1; done
    fi
    # Give init a moment to reap it, so no <defunct> entry lingers after `down`.
    local i
    for ((i = 0; i < 50; i++)); do
      [[ "$(proc_starttime "${pid}" 2>/dev/null)" == "${st}" ]] || break
      sleep 0.1
    done
    log "stopped ${label} (pid ${pid})"
  fi
  rm -f "${f}"
}
