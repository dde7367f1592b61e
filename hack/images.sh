#!/usr/bin/env bash
# Builds KubeKMS's container images as OCI image-layout archives without a Docker engine
# or a registry: the files come from this repository's cargo build, from gcc and from
# Debian packages, and umoci (a kept tool, Debian package umoci) writes the layers,
# config and manifest. `ctr -n k8s.io images import`, `kind load image-archive` and
# `skopeo copy oci-archive:...` read the archives. See docs/images.md.
#
# Usage: hack/images.sh build [--out DIR] [--profile dev|release] NAME...
#        hack/images.sh check [--out DIR] NAME...
#   NAME      pause     the pod sandbox image: one static binary (hack/images/pause.c)
#             busybox   a TEST image: Debian's busybox-static (sh, httpd, cat, sleep, ...)
#             kubekms   kubekms-plugin, kubekms-operator and kubekms-server of the cargo
#                       build of --profile in /usr/local/bin, the shared libraries
#                       they load (from Debian's packages), no shell, user 65532, no
#                       entrypoint (manifests name the binary in `command`)
#   --out     folder of the archives (default <repo>/target/images); writes
#             DIR/NAME.oci.tar holding the image kubekms.local/NAME:dev
#   --profile dev (default: the debug binaries the tests build) or release
#   check     imports DIR/NAME.oci.tar into a throwaway containerd (own root, state and
#             socket in a temp folder; needs root, containerd, ctr, runc) and runs each:
#             pause must exit 0 on SIGTERM, busybox runs sh/httpd/cat, kubekms runs each
#             binary's --help as its non-root user (so its libraries resolve)
#
# Reproducible: every file's mtime and the config's created time are SOURCE_DATE_EPOCH
# (default: the time of the last commit), owners are 0:0, so the same inputs (binaries,
# Debian package versions) give the same manifest digest, printed at the end.
#   KUBEKMS_IMAGES_NO_CARGO=1  kubekms: use the binaries already in target/ (no cargo build)
#   KUBEKMS_IMAGES_DEB_DIR     where downloaded .deb files are kept (default DIR/debs)
set -euo pipefail
# The images are built in command substitutions: a failing step must stop them too.
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="dev"
REGISTRY="kubekms.local"
# The runtime user of the kubekms image (distroless' "nonroot") and of pause (65535, as
# the upstream pause image).
KUBEKMS_UID=65532
PAUSE_UID=65535
# Debian packages whose files the kubekms image carries besides the binaries: the C
# library and libgcc_s (Rust's unwinder). Checked against `ldd` of the binaries below.
KUBEKMS_DEBS=(libc6 libgcc-s1)

log() { echo "[images] $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

command="${1:-}"
[[ "${command}" == build || "${command}" == check ]] || usage
shift
out_dir="${REPO_ROOT}/target/images"
profile="dev"
names=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out_dir="${2:?--out needs a folder}"; shift 2 ;;
    --profile) profile="${2:?--profile needs dev or release}"; shift 2 ;;
    -h|--help) usage ;;
    -*) die "unknown flag $1" ;;
    *) names+=("$1"); shift ;;
  esac
done
[[ ${#names[@]} -gt 0 ]] || usage
case "${profile}" in dev|release) ;; *) die "--profile must be dev or release" ;; esac
for name in "${names[@]}"; do
  case "${name}" in pause|busybox|kubekms) ;; *) die "unknown image ${name} (pause, busybox, kubekms)" ;; esac
done
mkdir -p "${out_dir}"
out_dir="$(cd "${out_dir}" && pwd)"

if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH="$(git -C "${REPO_ROOT}" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH
created="$(date -u -d "@${SOURCE_DATE_EPOCH}" +%Y-%m-%dT%H:%M:%SZ)"

work="$(mktemp -d "${TMPDIR:-/tmp}/kubekms-images.XXXXXX")"
containerd_pid=""
ctr=(ctr)
cleanup() {
  if [[ -n "${containerd_pid}" ]]; then
    # A task's shim outlives containerd: stop every task of a failed check first.
    local task
    for task in $(timeout 10 "${ctr[@]}" tasks ls -q 2>/dev/null); do
      timeout 10 "${ctr[@]}" tasks kill --signal SIGKILL "${task}" >/dev/null 2>&1 || true
      timeout 10 "${ctr[@]}" tasks delete --force "${task}" >/dev/null 2>&1 || true
    done
    kill "${containerd_pid}" 2>/dev/null || true
    wait "${containerd_pid}" 2>/dev/null || true
  fi
  # Snapshots of a container that did not stop cleanly stay mounted under the root.
  if [[ -d "${work}/containerd" ]]; then
    grep -o " ${work}/containerd/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  rm -rf "${work}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# As root umoci records the owners on disk (all root here); otherwise `unpack --rootless`
# makes the bundle map the caller to 0:0 (which is what the files are meant to be owned
# by) when it is repacked.
umoci_owner=()
[[ "$(id -u)" == 0 ]] || umoci_owner=(--rootless)

# Sets mtimes to SOURCE_DATE_EPOCH and modes to what umask-free builds give, so two
# builds of the same files give the same layer.
normalize_tree() {
  local root="$1"
  chmod -R u+rwX,go+rX,go-w "${root}"
  [[ ! -d "${root}/tmp" ]] || chmod 1777 "${root}/tmp"
  find "${root}" -exec touch -h -d "@${SOURCE_DATE_EPOCH}" {} +
}

# Writes the rootfs folder $2 as the only layer of image $1 with the given umoci config
# flags, and packs the layout into $out_dir/$1.oci.tar.
pack_image() {
  local name="$1" rootfs="$2"
  shift 2
  local layout="${work}/${name}-layout" ref="${REGISTRY}/${name}:${TAG}"
  local bundle="${work}/${name}-bundle"
  # umoci writes progress to stdout; stdout of this function is its one result line.
  # unpack + repack rather than `umoci insert`: 0.4.7's insert leaves the layer's tar
  # without its end (the last file's padding and the two zero blocks), which Go's tar
  # reader forgives and GNU tar and Python's tarfile do not.
  {
    umoci init --layout "${layout}"
    umoci new --image "${layout}:${ref}"
    umoci unpack "${umoci_owner[@]}" --image "${layout}:${ref}" "${bundle}"
    cp -a "${rootfs}/." "${bundle}/rootfs/"
    normalize_tree "${bundle}/rootfs"
    umoci repack --image "${layout}:${ref}" \
      --history.created "${created}" --history.created_by "hack/images.sh build ${name}" \
      "${bundle}"
    umoci config --image "${layout}:${ref}" --no-history \
      --created "${created}" --architecture amd64 --os linux \
      --config.label "org.opencontainers.image.created=${created}" \
      --config.label "org.opencontainers.image.title=${name}" \
      "$@"
    umoci gc --layout "${layout}"
  } >&2
  # Every layer must read to its end with GNU tar, not only with Go's forgiving reader.
  local blob
  for blob in "${layout}"/blobs/sha256/*; do
    if gzip -t "${blob}" 2>/dev/null; then
      tar -tzf "${blob}" >/dev/null 2>"${work}/tar-check.log" ||
        die "${name}: layer ${blob##*/} does not read to its end: $(tail -n 2 "${work}/tar-check.log")"
    fi
  done
  # The archive itself is also byte-for-byte reproducible: sorted, fixed mtime and owner.
  tar --sort=name --mtime="@${SOURCE_DATE_EPOCH}" --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "${layout}" -cf "${out_dir}/${name}.oci.tar.tmp" oci-layout index.json blobs
  mv "${out_dir}/${name}.oci.tar.tmp" "${out_dir}/${name}.oci.tar"
  local manifest
  manifest="$(sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' "${layout}/index.json")"
  log "${ref}: ${out_dir}/${name}.oci.tar ($(du -h "${out_dir}/${name}.oci.tar" | cut -f1)), manifest ${manifest}"
  echo "${name} ${ref} ${manifest}"
}

# Folders, /etc/passwd and /etc/group of a minimal rootfs ($1) whose non-root user is $2.
base_rootfs() {
  local root="$1" uid="$2"
  mkdir -p "${root}/etc" "${root}/tmp"
  printf '%s\n' "root:x:0:0:root:/root:/sbin/nologin" \
    "nonroot:x:${uid}:${uid}:nonroot:/home/nonroot:/sbin/nologin" \
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin" >"${root}/etc/passwd"
  printf '%s\n' "root:x:0:" "nonroot:x:${uid}:" "nogroup:x:65534:" >"${root}/etc/group"
  printf '%s\n' "hosts: files dns" >"${root}/etc/nsswitch.conf"
}

build_pause() {
  local root="${work}/pause-rootfs"
  mkdir -p "${root}"
  base_rootfs "${root}" "${PAUSE_UID}"
  # No debug info, no build id path: the same gcc gives the same bytes.
  gcc -static -Os -s -Wall -Wextra -Werror -o "${root}/pause" "${REPO_ROOT}/hack/images/pause.c"
  pack_image pause "${root}" --config.user "${PAUSE_UID}:${PAUSE_UID}" \
    --config.entrypoint /pause --config.workingdir / --config.stopsignal SIGTERM
}

build_busybox() {
  local busybox root="${work}/busybox-rootfs"
  busybox="$(command -v busybox || true)"
  [[ -n "${busybox}" ]] || die "busybox-static is not installed (hack/install-deps.sh)"
  if ldd "${busybox}" >/dev/null 2>&1; then
    die "${busybox} is linked dynamically; install Debian's busybox-static"
  fi
  mkdir -p "${root}/bin" "${root}/www"
  base_rootfs "${root}" 65532
  cp "${busybox}" "${root}/bin/busybox"
  local applet
  for applet in $("${busybox}" --list); do
    [[ "${applet}" == busybox ]] || ln -s busybox "${root}/bin/${applet}"
  done
  pack_image busybox "${root}" --config.env PATH=/bin --config.cmd sh --config.workingdir /
}

# Starts a containerd of its own under ${work}/containerd (no CRI plugin: only images
# and tasks are needed) and sets ctr to a client of it.
start_containerd() {
  local dir="${work}/containerd"
  mkdir -p "${dir}"
  printf '%s\n' "version = 2" "root = \"${dir}/root\"" "state = \"${dir}/state\"" \
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]' "[grpc]" \
    "  address = \"${dir}/containerd.sock\"" >"${dir}/config.toml"
  containerd --config "${dir}/config.toml" >"${dir}/containerd.log" 2>&1 &
  containerd_pid=$!
  ctr=(ctr --address "${dir}/containerd.sock" --namespace k8s.io)
  local _
  for _ in $(seq 1 100); do
    "${ctr[@]}" version >/dev/null 2>&1 && return 0
    kill -0 "${containerd_pid}" 2>/dev/null || break
    sleep 0.2
  done
  tail -n 20 "${dir}/containerd.log" >&2
  die "containerd did not answer on ${dir}/containerd.sock within 20 s (log above)"
}

# Runs image $1 as container $2: ctr run options (those starting with -), then the
# command; prints its output.
run_in() {
  local ref="$1" id="$2" options=()
  shift 2
  while [[ $# -gt 0 && "$1" == -* ]]; do
    if [[ "$1" == --mount ]]; then options+=("$1" "$2"); shift 2; else options+=("$1"); shift; fi
  done
  timeout 60 "${ctr[@]}" run --rm "${options[@]}" "${ref}" "${id}" "$@"
}

check_pause() {
  local ref="$1" rc=0 _
  timeout 60 "${ctr[@]}" run --rm "${ref}" pause-check >/dev/null 2>&1 &
  local run_pid=$!
  for _ in $(seq 1 100); do
    "${ctr[@]}" task ls 2>/dev/null | grep -q '^pause-check .*RUNNING' && break
    sleep 0.2
  done
  "${ctr[@]}" task kill --signal SIGTERM pause-check || die "pause: no running task to stop"
  wait "${run_pid}" || rc=$?
  [[ "${rc}" == 0 ]] || die "pause: exit status ${rc} after SIGTERM (want 0)"
  log "pause: ran, exited 0 on SIGTERM"
}

check_busybox() {
  local ref="$1" out
  out="$(run_in "${ref}" busybox-check sh -c 'echo hi >/tmp/f && cat /tmp/f && httpd --help 2>&1 | head -n 1 && sleep 0')" ||
    die "busybox: the shell command failed: ${out:-}"
  [[ "${out}" == hi*BusyBox* ]] || die "busybox: unexpected output: ${out}"
  log "busybox: sh, cat, httpd and sleep ran"
}

check_kubekms() {
  local ref="$1" binary state="${work}/kubekms-state" socket="${work}/kubekms-socket" _
  for binary in kubekms-plugin kubekms-operator kubekms-server; do
    run_in "${ref}" "${binary}-check" --read-only "/usr/local/bin/${binary}" --help >/dev/null ||
      die "kubekms: ${binary} --help failed in the image"
  done
  # As the static pod runs it (deploy/static-pod/kubekms-plugin.yaml): read-only root, the
  # state and socket folders bind-mounted from the host and owned by the image's user.
  install -d -m 0700 -o "${KUBEKMS_UID}" -g "${KUBEKMS_UID}" "${state}" "${socket}"
  local mounts=(--read-only
    --mount "type=bind,src=${state},dst=/var/lib/kubekms,options=rbind:rw"
    --mount "type=bind,src=${socket},dst=/run/kubekms,options=rbind:rw")
  run_in "${ref}" kubekms-init "${mounts[@]}" \
    /usr/local/bin/kubekms-plugin init --state-dir /var/lib/kubekms >/dev/null ||
    die "kubekms: kubekms-plugin init failed in the image"
  [[ "$(stat -c '%u %a' "${state}/root.key")" == "${KUBEKMS_UID} 600" ]] ||
    die "kubekms: root.key is not ${KUBEKMS_UID}'s with mode 0600: $(stat -c '%u %a' "${state}/root.key")"
  timeout 60 "${ctr[@]}" run --rm "${mounts[@]}" "${ref}" kubekms-serve \
    /usr/local/bin/kubekms-plugin serve --state-dir /var/lib/kubekms \
    --socket /run/kubekms/kms.sock >"${work}/kubekms-serve.log" 2>&1 &
  local serve_pid=$!
  for _ in $(seq 1 150); do
    [[ -S "${socket}/kms.sock" ]] && break
    kill -0 "${serve_pid}" 2>/dev/null || break
    sleep 0.2
  done
  local status rc=0
  status="$(run_in "${ref}" kubekms-status "${mounts[@]}" \
    /usr/local/bin/kubekms-plugin status --socket /run/kubekms/kms.sock 2>&1)" || rc=$?
  "${ctr[@]}" task kill --signal SIGTERM kubekms-serve >/dev/null 2>&1 || true
  wait "${serve_pid}" || true
  if [[ "${rc}" != 0 || "${status}" != *ok* ]]; then
    tail -n 20 "${work}/kubekms-serve.log" >&2
    die "kubekms: the plugin served from the image, but status said (exit ${rc}): ${status}"
  fi
  log "kubekms: the three binaries' --help, and kubekms-plugin init, serve and status ran as user ${KUBEKMS_UID} on a read-only root"
}

if [[ "${command}" == check ]]; then
  [[ "$(id -u)" == 0 ]] || die "check needs root (containerd and runc)"
  for tool in containerd ctr runc; do
    command -v "${tool}" >/dev/null || die "${tool} is not installed"
  done
  start_containerd
  for name in "${names[@]}"; do
    archive="${out_dir}/${name}.oci.tar"
    [[ -f "${archive}" ]] || die "${archive} is missing (hack/images.sh build ${name})"
    "${ctr[@]}" images import "${archive}" >&2
    "check_${name}" "${REGISTRY}/${name}:${TAG}"
  done
  exit 0
fi

for tool in umoci tar gcc; do
  command -v "${tool}" >/dev/null || die "${tool} is not installed (hack/install-deps.sh)"
done
# The .deb of package $1 in the version installed on this machine (the one the binaries
# were linked against), downloaded once into the deb folder; prints its path.
fetch_deb() {
  local pkg="$1" deb_dir="$2" version arch file
  version="$(dpkg-query -W -f='${Version}' "${pkg}")" || die "${pkg} is not installed here"
  arch="$(dpkg-query -W -f='${Architecture}' "${pkg}")"
  file="${deb_dir}/${pkg}_${version//:/%3a}_${arch}.deb"
  if [[ ! -f "${file}" ]]; then
    # As root apt drops to _apt, who cannot write to the deb folder (and says so).
    local sandbox=()
    [[ "$(id -u)" != 0 ]] || sandbox=(-o APT::Sandbox::User=root)
    (cd "${deb_dir}" && apt-get "${sandbox[@]}" download "${pkg}=${version}") >&2 ||
      die "apt-get download ${pkg}=${version} failed (put ${file} there by hand when offline)"
  fi
  [[ -f "${file}" ]] || die "apt-get download did not write ${file}"
  echo "${file}"
}

build_kubekms() {
  local root="${work}/kubekms-rootfs" target_dir profile_dir=debug binary deb
  local binaries=(kubekms-plugin kubekms-operator kubekms-server)
  local deb_dir="${KUBEKMS_IMAGES_DEB_DIR:-${out_dir}/debs}"
  target_dir="${CARGO_TARGET_DIR:-${REPO_ROOT}/target}"
  [[ "${target_dir}" == /* ]] || target_dir="${REPO_ROOT}/${target_dir}"
  [[ "${profile}" == dev ]] || profile_dir=release
  if [[ -z "${KUBEKMS_IMAGES_NO_CARGO:-}" ]]; then
    local cargo_args=(build -p kubekms-plugin -p kubekms-operator -p kubekms-server --bins)
    [[ "${profile}" == dev ]] || cargo_args+=(--release)
    # Without SOURCE_DATE_EPOCH, which build scripts watch: the same build as the tests'.
    (cd "${REPO_ROOT}" && env -u SOURCE_DATE_EPOCH cargo "${cargo_args[@]}") >&2
  fi
  mkdir -p "${root}/usr/local/bin" "${deb_dir}"
  base_rootfs "${root}" "${KUBEKMS_UID}"
  for binary in "${binaries[@]}"; do
    [[ -x "${target_dir}/${profile_dir}/${binary}" ]] ||
      die "${target_dir}/${profile_dir}/${binary} is missing (cargo build)"
    cp "${target_dir}/${profile_dir}/${binary}" "${root}/usr/local/bin/${binary}"
  done
  # The libraries come from Debian's packages, unpacked as dpkg would (without running
  # maintainer scripts), minus what a process here never opens.
  local labels=()
  for pkg in "${KUBEKMS_DEBS[@]}"; do
    deb="$(fetch_deb "${pkg}" "${deb_dir}")"
    dpkg-deb -x "${deb}" "${root}"
    labels+=(--config.label "io.kubekms.debian.${pkg}=$(dpkg-deb -f "${deb}" Version)")
  done
  rm -rf "${root:?}/usr/share" "${root:?}/usr/lib/x86_64-linux-gnu/gconv" "${root:?}/sbin" \
    "${root:?}/usr/sbin" "${root:?}/usr/bin" "${root:?}/etc/ld.so.conf.d"
  # Every library a binary needs must be in the image: no shell, no ldconfig to find out
  # later. `ldd` resolves them on this machine; the same names must exist in the rootfs.
  local lib
  for binary in "${binaries[@]}"; do
    while read -r lib; do
      [[ -n "${lib}" ]] || continue
      compgen -G "${root}/lib/x86_64-linux-gnu/${lib}" >/dev/null ||
        compgen -G "${root}/usr/lib/x86_64-linux-gnu/${lib}" >/dev/null ||
        compgen -G "${root}/lib64/${lib}" >/dev/null ||
        die "${binary} needs ${lib}, which none of ${KUBEKMS_DEBS[*]} provides: add its package to KUBEKMS_DEBS"
    done < <(ldd "${root}/usr/local/bin/${binary}" | awk '$1 !~ /^linux-vdso/ {n=$1; sub(".*/", "", n); print n}')
  done
  pack_image kubekms "${root}" --config.user "${KUBEKMS_UID}:${KUBEKMS_UID}" \
    --config.workingdir / --config.env PATH=/usr/local/bin \
    --config.cmd /usr/local/bin/kubekms-plugin --config.cmd --help \
    --config.label "io.kubekms.profile=${profile}" "${labels[@]}"
}

built=()
for name in "${names[@]}"; do
  started=${SECONDS}
  built+=("$(build_"${name}")")
  log "${name} built in $((SECONDS - started)) s"
done
printf '%s\n' "${built[@]}"
