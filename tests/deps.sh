# shellcheck shell=bash
# What the project needs on a Debian 12 host, in one place: sourced by tests/run (the test
# command), examples/quickstart.sh and, through tests/run, .ci/run. Defines the package lists and
# two functions; prints nothing when sourced.

# To build the workspace (the libseccomp crate links libseccomp; the CRI protos need protoc).
BUILD_PACKAGES=(build-essential pkg-config libseccomp-dev protobuf-compiler ca-certificates git)
# To run lazy containers as the quickstart does.
RUNTIME_PACKAGES=(containerd runc docker-registry skopeo umoci mmdebstrap fuse3 ca-certificates curl jq iproute2
    procps)
# Everything any test needs besides the two above: CNI for CRI pods, the cgroup v2 VM (qemu, a
# Debian kernel, busybox), the link emulator and the SOCI peer's dependencies.
TEST_PACKAGES=(containernetworking-plugins attr busybox-static cpio tmux qemu-system-x86 linux-image-amd64 kmod
    xz-utils openssl fonts-dejavu-core)

# ensure_packages WHO PACKAGE...: installs the packages that are missing with apt-get. WHO names the
# caller in messages. Returns non-zero (after saying what to run) when it cannot install: not root,
# no apt-get, or apt-get failed.
ensure_packages() {
    local who=$1
    shift
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        printf '%s: missing packages: %s\n  install them as root: apt-get install --no-install-recommends %s\n' \
            "$who" "${missing[*]}" "${missing[*]}" >&2
        return 1
    fi
    # Each package once (the lists overlap).
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    printf '==> %s: installing %s\n' "$who" "${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || { printf '%s: apt-get update failed: check the network and /etc/apt/sources.list\n' "$who" >&2; return 1; }
    apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        { printf '%s: apt-get install %s failed (output above)\n' "$who" "${missing[*]}" >&2; return 1; }
}

# ensure_cargo WHO: puts rustup's cargo on PATH (also the invoking user's under sudo). Returns
# non-zero, after saying what to do, when there is none.
ensure_cargo() {
    local who=$1 envf
    for envf in "$HOME/.cargo/env" "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/env"; do
        # shellcheck disable=SC1090
        [ -f "$envf" ] && ! command -v cargo >/dev/null 2>&1 && . "$envf"
    done
    command -v cargo >/dev/null 2>&1 && return 0
    printf '%s: cargo not found: install Rust >= 1.85 with rustup (https://rustup.rs; Debian 12'"'"'s rustc is too old)\n' \
        "$who" >&2
    return 1
}

# cargo_with_progress WHO CARGO-ARGS...: runs cargo, and every 20 s while it builds prints one line
# with the crates compiled so far out of those in Cargo.lock and the time spent, so a first build
# of ~15 minutes on a small machine shows it is moving. cargo's own output is kept in
# $CARGO_LOG (default: a temp file) and its last lines printed when it fails.
cargo_with_progress() {
    local who=$1
    shift
    local log=${CARGO_LOG:-$(mktemp /tmp/cargo-build.XXXXXX.log)}
    local total start rc=0
    total=$(grep -c '^name = ' "$(dirname "${BASH_SOURCE[0]}")/../Cargo.lock" 2>/dev/null || echo '?')
    start=$(date +%s)
    cargo "$@" >"$log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if [ $(( ($(date +%s) - start) % 20 )) -eq 0 ]; then
            printf '    %s: cargo %s: %s of ~%s crates compiled, %ss so far\n' "$who" "$1" \
                "$(grep -c '^ *Compiling ' "$log")" "$total" "$(( $(date +%s) - start ))"
            sleep 1
        fi
    done
    wait "$pid" || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '%s: cargo %s failed; its last lines (all of it in %s):\n' "$who" "$*" "$log" >&2
        tail -n 40 "$log" >&2
        return "$rc"
    fi
    printf '    %s: cargo %s: done in %ss\n' "$who" "$1" "$(( $(date +%s) - start ))"
    [ -z "${CARGO_LOG:-}" ] && rm -f "$log"
    return 0
}
