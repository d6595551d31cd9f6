#!/usr/bin/env bash
# containerd-shim-lazy quickstart: start a ~330 MB Debian python3 + numpy/pandas image LAZILY and compare
# it with a full pull + runc.
#
#   bash examples/quickstart.sh          # as root (or: sudo bash examples/quickstart.sh)
#
# On a Debian 12 host, as root. It installs the Debian packages it needs, also those the first
# cargo build needs (that build takes ~15 minutes on a 2-core machine; progress is printed). Everything runs privately: a docker-registry on 127.0.0.1:<free
# port>, a containerd with its own root/state/socket under a temp dir (a system containerd is never
# touched), a unique containerd namespace. On exit, also on failure or Ctrl-C, it removes all of it
# (tasks, containers, shims, mounts, cgroups, containerd's host paths, temp dirs) and checks that no
# process, mount, cgroup or network interface is left behind.
#
# Environment (all optional):
#   QUICKSTART_CACHE  where the built root filesystem and OCI layout are kept between runs
#                     (default /var/cache/containerd-shim-lazy-quickstart; delete it to rebuild)
#   DEBIAN_MIRROR     mirror for mmdebstrap (default http://deb.debian.org/debian)
#   QUICKSTART_PROFILE shim profile from runtimeclass/shim/ to run with: lazy (default) or lazy-sandbox
#   QUICKSTART_STEPS  run only the first N steps, then clean up (2: packages and binaries, what a
#                     test checks on every CI run without building an image)
#   LAZY_BIN_DIR      directory holding lazyctl and containerd-shim-lazy-v2 (default: build the
#                     workspace with cargo into target/debug when missing or older than the sources)
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${QUICKSTART_CACHE:-/var/cache/containerd-shim-lazy-quickstart}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PROFILE=${QUICKSTART_PROFILE:-lazy}
NS="lazyqs$$x$RANDOM"
RUNTIME_LAZY=io.containerd.lazy.v2
RUNTIME_RUNC=io.containerd.runc.v2
PY_CODE='import numpy; print("numpy", numpy.__version__, "says sum(0..9) =", numpy.arange(10).sum())'
TOTAL_STEPS=9

STEP="start"
WORK=""
REGISTRY_PID=""
CONTAINERD_PID=""
SOCK=""
FIFOS_BEFORE=""
LINKS_BEFORE=""
OPT_CONTAINERD_EXISTED=1

log() { printf '%s\n' "$*"; }
step() {
    if [ -n "${QUICKSTART_STEPS:-}" ] && [ "$1" -gt "$QUICKSTART_STEPS" ]; then
        printf '\nquickstart: stopping before step %s (QUICKSTART_STEPS=%s)\n' "$1" "$QUICKSTART_STEPS"
        exit 0
    fi
    STEP="$2"
    printf '\n==> [%s/%s] %s\n' "$1" "$TOTAL_STEPS" "$2"
}
die() {
    printf 'quickstart: step "%s" failed: %s\n' "$STEP" "$*" >&2
    exit 1
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
mb() { awk -v b="$1" 'BEGIN { if (b < 1e6) printf "%.1f kB", b / 1e3; else printf "%.1f MB", b / 1e6 }'; }

on_error() {
    local rc=$1 line=$2 cmd=$3
    # shellcheck disable=SC2016 # the backquotes are literal
    printf '\nquickstart: FAILED in step "%s" (line %s): `%s` exited %s\n' "$STEP" "$line" "$cmd" "$rc" >&2
    if [ -n "$WORK" ] && [ -f "$WORK/containerd.log" ]; then
        printf -- '--- last lines of the containerd log (%s) ---\n' "$WORK/containerd.log" >&2
        tail -n 25 "$WORK/containerd.log" >&2 || true
    fi
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
trap 'printf "\nquickstart: interrupted in step \"%s\"\n" "$STEP" >&2; exit 130' INT
trap 'exit 143' TERM
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# Cleanup: runs on every exit. Never fails; reports what it could not remove.

ctr_() { ctr --address "$SOCK" --namespace "$NS" "$@"; }

# Pids of processes whose command line mentions $1 (our containerd socket or temp dir).
pids_mentioning() {
    local needle=$1 p
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = "$$" ] && continue
        if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$needle"; then
            printf '%s\n' "${p#/proc/}"
        fi
    done
}

mounts_under() {
    # Field 5 of mountinfo is the mount point (spaces escaped as \040); deepest first.
    awk -v dir="$1/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo | awk '{ print length($0) " " $0 }' |
        sort -rn | cut -d' ' -f2-
}

ns_cgroups() {
    local d
    for d in /sys/fs/cgroup/"$NS" /sys/fs/cgroup/*/"$NS"; do
        [ -d "$d" ] && printf '%s\n' "$d"
    done
    return 0
}

remove_cgroup_tree() {
    local root=$1 d pid
    # Deepest first: a container may have made sub-cgroups.
    while IFS= read -r d; do
        [ -f "$d/cgroup.kill" ] && echo 1 >"$d/cgroup.kill" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            local pids
            pids=$(cat "$d/cgroup.procs" 2>/dev/null || true)
            [ -z "$pids" ] && break
            for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done
            sleep 0.2
        done
        rmdir "$d" 2>/dev/null
    done < <(find "$root" -depth -type d 2>/dev/null)
}

cleanup() {
    local rc=$?
    trap - ERR INT TERM EXIT
    set +e
    [ -z "$WORK" ] && exit "$rc"
    printf '\n==> cleanup (namespace %s, temp dir %s)\n' "$NS" "$WORK"
    if [ -n "$CONTAINERD_PID" ] && kill -0 "$CONTAINERD_PID" 2>/dev/null; then
        local id
        for id in $(ctr_ task ls -q 2>/dev/null); do
            ctr_ task kill -s SIGKILL "$id" >/dev/null 2>&1
        done
        sleep 1
        for id in $(ctr_ task ls -q 2>/dev/null); do
            timeout 20 ctr_ task delete -f "$id" >/dev/null 2>&1
        done
        for id in $(ctr_ containers ls -q 2>/dev/null); do
            timeout 20 ctr_ containers rm "$id" >/dev/null 2>&1
        done
        for id in $(ctr_ images ls -q 2>/dev/null); do
            ctr_ images rm "$id" >/dev/null 2>&1
        done
    fi
    # Shims of our containerd (they outlive containerd by design), then containerd itself.
    local pid
    for pid in $(pids_mentioning "$SOCK"); do
        [ "$pid" = "$CONTAINERD_PID" ] || kill -KILL "$pid" 2>/dev/null
    done
    # Shim sockets live under /run/containerd/s; each bundle names its own in `address`.
    local a
    for a in "$WORK"/state/io.containerd.runtime.v2.task/"$NS"/*/address; do
        [ -f "$a" ] && rm -f "$(sed 's|^unix://||' "$a")"
    done
    for pid in $CONTAINERD_PID $REGISTRY_PID; do
        kill -TERM "$pid" 2>/dev/null
    done
    for _ in $(seq 1 50); do
        kill -0 "$CONTAINERD_PID" 2>/dev/null || kill -0 "$REGISTRY_PID" 2>/dev/null || break
        sleep 0.2
    done
    for pid in $CONTAINERD_PID $REGISTRY_PID; do
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    # Container processes and cgroups: v2 (our shim) and v1 hierarchies (runc on hybrid hosts).
    local cg
    while IFS= read -r cg; do remove_cgroup_tree "$cg"; done < <(ns_cgroups)
    # Mounts: container rootfs overlays and lazy FUSE mounts under the temp dir.
    local m
    while IFS= read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cleanup: cannot unmount $m"
    done < <(mounts_under "$WORK")
    # Fixed host paths containerd 1.6 writes.
    rm -rf "/run/containerd/runc/$NS"
    # ctr's stdio fifo dirs (/run/containerd/fifo/<random>/<id>-std{in,out,err}): only new ones
    # holding nothing but our container and exec ids; others belong to other containerd clients.
    if [ -d /run/containerd/fifo ]; then
        local f
        for f in /run/containerd/fifo/*; do
            [ -d "$f" ] || continue
            grep -qxF -- "$f" <<<"$FIFOS_BEFORE" && continue
            local e ours=0
            for e in "$f"/* "$f"/.[!.]*; do
                [ -e "$e" ] || continue
                case "${e##*/}" in
                    qs-lazy-std* | qs-runc-std* | qs-py-std*) ours=1 ;;
                    *) ours=0; break ;;
                esac
            done
            [ "$ours" = 1 ] && rm -rf "$f"
        done
    fi
    if [ "$OPT_CONTAINERD_EXISTED" = 0 ] && [ -d /opt/containerd ] &&
        [ -z "$(find /opt/containerd -type f 2>/dev/null | head -n 1)" ]; then
        rm -rf /opt/containerd
    fi
    rm -f "$CACHE"/*.tmp.tar 2>/dev/null
    rm -rf "$CACHE"/layout.tmp 2>/dev/null

    # What is left? Say so, either way.
    local left=()
    [ -n "$(pids_mentioning "$WORK")" ] && left+=("processes: $(pids_mentioning "$WORK" | tr '\n' ' ')")
    [ -n "$(mounts_under "$WORK")" ] && left+=("mounts: $(mounts_under "$WORK" | tr '\n' ' ')")
    [ -n "$(ns_cgroups)" ] && left+=("cgroups: $(ns_cgroups | tr '\n' ' ')")
    [ -e "/run/containerd/runc/$NS" ] && left+=("runc state: /run/containerd/runc/$NS")
    local our_fifos
    our_fifos=$(find /run/containerd/fifo -mindepth 2 -maxdepth 2 -newer "$WORK/containerd.toml" \
        \( -name 'qs-lazy-std*' -o -name 'qs-runc-std*' -o -name 'qs-py-std*' \) 2>/dev/null | tr '\n' ' ')
    [ -n "$our_fifos" ] && left+=("ctr fifos: $our_fifos")
    local links_after
    links_after=$(ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | sort)
    [ "$links_after" != "$LINKS_BEFORE" ] && left+=("network interfaces changed: $(comm -13 <(echo "$LINKS_BEFORE") <(echo "$links_after") | tr '\n' ' ')")
    if [ ${#left[@]} -eq 0 ]; then
        rm -rf "$WORK"
        log "cleanup: done. No process, mount, cgroup or network interface of the quickstart is left."
    else
        log "cleanup: LEFT BEHIND (remove by hand; the temp dir $WORK is kept):"
        printf '  %s\n' "${left[@]}"
        [ "$rc" = 0 ] && rc=1
    fi
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
step 1 "checking the host and installing packages"
[ "$(id -u)" = 0 ] || die "run as root (for example: sudo bash $0)"
[ -r /etc/debian_version ] || log "warning: not a Debian host; the apt-get steps assume Debian 12 (bookworm)"
# shellcheck source=tests/deps.sh
. "$REPO/tests/deps.sh"
needed=("${RUNTIME_PACKAGES[@]}")
# The build packages too, unless prebuilt binaries are given.
[ -n "${LAZY_BIN_DIR:-}" ] || needed+=("${BUILD_PACKAGES[@]}")
ensure_packages quickstart "${needed[@]}" || die "cannot install the packages it needs (above)"
log "packages present: $(printf '%s\n' "${needed[@]}" | sort -u | tr '\n' ' ')"
modprobe fuse 2>/dev/null || true
[ -c /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"

# ---------------------------------------------------------------------------------------------
step 2 "the shim and lazyctl binaries"
BINS=(lazyctl containerd-shim-lazy-v2)
if [ -n "${LAZY_BIN_DIR:-}" ]; then
    BIN_SRC=$LAZY_BIN_DIR
    for b in "${BINS[@]}"; do [ -x "$BIN_SRC/$b" ] || die "$BIN_SRC/$b not found (LAZY_BIN_DIR)"; done
else
    BIN_SRC="$REPO/target/debug"
    stale=""
    for b in "${BINS[@]}"; do
        if [ ! -x "$BIN_SRC/$b" ]; then
            stale="$b is missing"
        elif [ -n "$(find "$REPO/vfs" "$REPO/shim" "$REPO/Cargo.toml" "$REPO/Cargo.lock" -newer "$BIN_SRC/$b" \
            \( -name '*.rs' -o -name 'Cargo.*' \) -not -path '*/fuzz/*' -print -quit 2>/dev/null)" ]; then
            stale="$b is older than the sources"
        fi
    done
    if [ -n "$stale" ]; then
        log "building ($stale): cargo build --bin lazyctl --bin containerd-shim-lazy-v2"
        ensure_cargo quickstart || die "no Rust toolchain (above)"
        log "the first build compiles ~300 crates: about 15 minutes on 2 cores, a minute or two after that"
        (cd "$REPO" && cargo_with_progress quickstart build --bin lazyctl --bin containerd-shim-lazy-v2) ||
            die "cargo build failed (output above)"
    else
        log "up to date in $BIN_SRC"
    fi
fi

WORK=$(mktemp -d /tmp/lazy-quickstart.XXXXXX)
SOCK="$WORK/containerd.sock"
FIFOS_BEFORE=$(find /run/containerd/fifo -mindepth 1 -maxdepth 1 2>/dev/null || true)
LINKS_BEFORE=$(ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | sort)
[ -e /opt/containerd ] || OPT_CONTAINERD_EXISTED=0
mkdir -p "$WORK/bin"
# A private copy: a rebuild in the tree while we run cannot change the binaries under us.
for b in "${BINS[@]}"; do cp "$BIN_SRC/$b" "$WORK/bin/$b"; done
log "binaries: $WORK/bin ($(du -sh "$WORK/bin" | cut -f1)); temp dir $WORK; containerd namespace $NS"

# ---------------------------------------------------------------------------------------------
step 3 "starting a private docker-registry on 127.0.0.1"
PORT=""
for p in $(shuf -i 20000-60999 -n 50); do
    if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then PORT=$p; break; fi
done
[ -n "$PORT" ] || die "no free TCP port found on 127.0.0.1"
mkdir -p "$WORK/registry"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
EOF
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
REG="127.0.0.1:$PORT"
for _ in $(seq 1 100); do
    curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break
    kill -0 "$REGISTRY_PID" 2>/dev/null || die "docker-registry exited: $(tail -n 5 "$WORK/registry.log")"
    sleep 0.1
done
curl -fsS "http://$REG/v2/" >/dev/null || die "docker-registry did not answer on $REG within 10 s"
log "registry: http://$REG (pid $REGISTRY_PID)"

# ---------------------------------------------------------------------------------------------
step 4 "starting a private containerd with the lazy runtime"
cat >"$WORK/containerd.toml" <<EOF
version = 2
root = "$WORK/root"
state = "$WORK/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
EOF
# containerd finds io.containerd.lazy.v2 as containerd-shim-lazy-v2 on its PATH.
PATH="$WORK/bin:$PATH" containerd --config "$WORK/containerd.toml" >"$WORK/containerd.log" 2>&1 &
CONTAINERD_PID=$!
for _ in $(seq 1 200); do
    ctr_ version >/dev/null 2>&1 && break
    kill -0 "$CONTAINERD_PID" 2>/dev/null || die "containerd exited: $(tail -n 5 "$WORK/containerd.log")"
    sleep 0.1
done
ctr_ version >/dev/null 2>&1 || die "containerd did not answer on $SOCK within 20 s"
log "containerd $(containerd --version | awk '{ print $3 }'): $SOCK (pid $CONTAINERD_PID)"
# The shim's settings for this run: the node profile runtimeclass/shim/$PROFILE.toml (what
# install.sh installs), with a cold chunk cache of its own.
[ -f "$REPO/runtimeclass/shim/$PROFILE.toml" ] || die "no shim profile $REPO/runtimeclass/shim/$PROFILE.toml"
sed "s|^dir = .*|dir = \"$WORK/cache\"|" "$REPO/runtimeclass/shim/$PROFILE.toml" >"$WORK/shim.toml"
log "shim config: runtimeclass/shim/$PROFILE.toml with [cache] dir = $WORK/cache"
# lazy-sandbox's default_pids_limit needs the cgroup v2 pids controller; without it every Create
# would fail, so this demo (not a node install) runs with the limit unenforced.
if grep -q '^default_pids_limit = [1-9]' "$WORK/shim.toml" &&
    ! grep -qw pids /sys/fs/cgroup/unified/cgroup.controllers /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    sed -i 's|^allow_unenforced_limits = false|allow_unenforced_limits = true|' "$WORK/shim.toml"
    log "no cgroup v2 pids controller: [cgroup] allow_unenforced_limits = true for this run"
fi

# ---------------------------------------------------------------------------------------------
step 5 "building the image: Debian 12 + python3, numpy, pandas (cached in $CACHE)"
mkdir -p "$CACHE"
ROOTFS="$CACHE/python-rootfs.tar"
LAYOUT="$CACHE/layout"
if [ ! -f "$ROOTFS" ]; then
    log "mmdebstrap from $MIRROR (a few minutes; cached afterwards)"
    t=$(now)
    # mmdebstrap picks its output format from the file name: it must end in .tar.
    mmdebstrap --quiet --variant=minbase --include=python3,python3-numpy,python3-pandas bookworm \
        "$CACHE/python-rootfs.$$.tmp.tar" "$MIRROR" || die "mmdebstrap failed (output above); check DEBIAN_MIRROR"
    mv "$CACHE/python-rootfs.$$.tmp.tar" "$ROOTFS"
    log "root filesystem built in $(secs "$t" "$(now)") s"
fi
if [ ! -f "$LAYOUT/index.json" ]; then
    log "writing the OCI image layout (one gzip layer)"
    rm -rf "$CACHE/layout.tmp"
    umoci init --layout "$CACHE/layout.tmp"
    umoci new --image "$CACHE/layout.tmp:v1"
    umoci raw add-layer --image "$CACHE/layout.tmp:v1" --history.created_by "mmdebstrap (quickstart)" "$ROOTFS"
    umoci config --image "$CACHE/layout.tmp:v1" --config.cmd python3 \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.workingdir /
    mv "$CACHE/layout.tmp" "$LAYOUT"
fi
UNPACKED=$(stat -c %s "$ROOTFS")
log "image: $(mb "$UNPACKED") unpacked (tar of the root filesystem)"

# ---------------------------------------------------------------------------------------------
step 6 "pushing the image with skopeo"
SRC="$REG/quickstart/python:v1"
LAZY="$REG/quickstart/python:v1-lazy"
skopeo copy --quiet --dest-tls-verify=false "oci:$LAYOUT:v1" "docker://$SRC" || die "skopeo copy to $SRC failed"
# Bytes of the layers containerd pulls for reference $1 (this host's manifest of an index).
manifest_bytes() {
    local raw digest
    raw=$(skopeo inspect --raw --tls-verify=false "docker://$1")
    digest=$(jq -r '[.manifests[]? | select(.platform.architecture == $a)][0].digest // empty' --arg a "$(dpkg --print-architecture)" <<<"$raw")
    [ -n "$digest" ] && raw=$(skopeo inspect --raw --tls-verify=false "docker://${1%:*}@$digest")
    jq '[.layers[]?.size] | add // 0' <<<"$raw"
}
SRC_LAYERS=$(manifest_bytes "$SRC")
log "pushed $SRC ($(mb "$SRC_LAYERS") of gzip layers)"

# ---------------------------------------------------------------------------------------------
step 7 "converting it to a lazy image: lazyctl convert"
"$WORK/bin/lazyctl" convert "$SRC" "$LAZY" || die "lazyctl convert $SRC $LAZY failed"
STUB_LAYERS=$(manifest_bytes "$LAZY")
log "lazy image $LAZY: the stub containerd pulls is $(mb "$STUB_LAYERS"); file data stays in the registry"

# Runs `python3 -c ...` in a container of image $2 with runtime $3: detached `sleep`, then
# `ctr task exec`. Sets RUN_OUT, PULL_S, RUN_S.
run_python() {
    local id=$1 image=$2 runtime=$3
    shift 3
    local t0 t1 t2
    t0=$(now)
    ctr_ images pull --plain-http "$image" >"$WORK/pull-$id.log" 2>&1 ||
        die "ctr images pull $image failed: $(tail -n 5 "$WORK/pull-$id.log")"
    t1=$(now)
    ctr_ run -d --runtime "$runtime" "$@" "$image" "$id" sleep 1000 >"$WORK/run-$id.log" 2>&1 ||
        die "ctr run --runtime $runtime $image failed: $(tail -n 5 "$WORK/run-$id.log")"
    RUN_OUT=$(ctr_ task exec --exec-id qs-py "$id" python3 -c "$PY_CODE" 2>&1) ||
        die "python3 in $id failed: $RUN_OUT"
    t2=$(now)
    PULL_S=$(secs "$t0" "$t1")
    RUN_S=$(secs "$t1" "$t2")
}

stop_container() {
    ctr_ task kill -s SIGKILL "$1" >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
        ctr_ task ls 2>/dev/null | grep -q "^$1 .*STOPPED" && break
        sleep 0.1
    done
    ctr_ task delete "$1" >/dev/null 2>&1 || true
    ctr_ containers rm "$1" >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
step 8 "running it LAZILY: ctr run --runtime $RUNTIME_LAZY"
run_python qs-lazy "$LAZY" "$RUNTIME_LAZY" --runtime-config-path "$WORK/shim.toml"
LAZY_OUT=$RUN_OUT LAZY_PULL=$PULL_S LAZY_RUN=$RUN_S
log "output: $LAZY_OUT"
STATS=$("$WORK/bin/lazyctl" stats "$WORK/state/io.containerd.runtime.v2.task/$NS/qs-lazy/lazy") ||
    die "lazyctl stats failed: $STATS"
IMAGE_BYTES=$(jq .image_bytes <<<"$STATS")
FETCHED=$(jq .bytes_fetched <<<"$STATS")
FETCH_PCT=$(awk -v f="$FETCHED" -v i="$IMAGE_BYTES" 'BEGIN { printf "%.2f", f * 100 / i }')
log "time to first output: $LAZY_PULL s pull (stub) + $LAZY_RUN s run"
log "fetched $(mb "$FETCHED") of $(mb "$IMAGE_BYTES") of file data ($FETCH_PCT%); lazyctl stats:"
jq -c . <<<"$STATS"
stop_container qs-lazy

# ---------------------------------------------------------------------------------------------
step 9 "the same image with a FULL pull and runc: ctr run --runtime $RUNTIME_RUNC"
run_python qs-runc "$SRC" "$RUNTIME_RUNC"
RUNC_OUT=$RUN_OUT RUNC_PULL=$PULL_S RUNC_RUN=$RUN_S
log "output: $RUNC_OUT"
stop_container qs-runc
[ "$RUNC_OUT" = "$LAZY_OUT" ] || die "the lazy and runc outputs differ: '$LAZY_OUT' vs '$RUNC_OUT'"

total() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a + b }'; }
LAZY_TOTAL=$(total "$LAZY_PULL" "$LAZY_RUN")
RUNC_TOTAL=$(total "$RUNC_PULL" "$RUNC_RUN")
STEP="summary"
printf '\n==> comparison: python3 -c "import numpy ..." in a %s image (%s gzip)\n\n' "$(mb "$IMAGE_BYTES")" "$(mb "$SRC_LAYERS")"
printf '  %-26s %22s %22s\n' "" "lazy ($RUNTIME_LAZY)" "full pull + runc"
printf '  %-26s %20s s %20s s\n' "pull" "$LAZY_PULL" "$RUNC_PULL"
printf '  %-26s %20s s %20s s\n' "run -> first output" "$LAZY_RUN" "$RUNC_RUN"
printf '  %-26s %20s s %20s s\n' "time to first output" "$LAZY_TOTAL" "$RUNC_TOTAL"
printf '  %-26s %22s %22s\n' "downloaded before start" "$(mb "$STUB_LAYERS")" "$(mb "$SRC_LAYERS")"
printf '  %-26s %22s %22s\n' "file data fetched" "$(mb "$FETCHED") ($FETCH_PCT%)" "$(mb "$IMAGE_BYTES") (100%)"
printf '\n  output (both): %s\n' "$LAZY_OUT"
