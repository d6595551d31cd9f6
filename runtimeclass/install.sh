#!/usr/bin/env bash
# Installs containerd-shim-lazy on a node: the binaries into /usr/local/bin (on containerd's PATH:
# containerd 1.6 ignores runtime_path for CRI), the shim profiles into /etc/containerd-shim-lazy/,
# and says which containerd config snippet to merge. It never edits /etc/containerd/config.toml
# unless asked with --apply (then it appends the handlers only when absent, after a backup).
# Idempotent: running it again changes nothing that is already in place.
#
#   sudo bash runtimeclass/install.sh [--from DIR] [--apply] [--prefix DIR] [--containerd-version X.Y]
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BINS=(containerd-shim-lazy-v2 lazyctl)
PROFILES=(lazy lazy-sandbox)

usage() {
    cat <<EOF
usage: $0 [options]
  --from DIR                where the built binaries are (default: $REPO/target/debug, else target/release)
  --apply                   append the lazy and lazy-sandbox handlers to the containerd config when absent
                            (a backup is written first); without it, only print what to merge
  --prefix DIR              install under DIR instead of / (for testing: DIR/usr/local/bin, DIR/etc/...)
  --containerd-config FILE  containerd config to check or --apply to (default: PREFIX/etc/containerd/config.toml)
  --containerd-version X.Y  do not ask \`containerd --version\` (e.g. on a host without containerd)
  -h, --help                this text
EOF
}

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}
trap 'printf "install.sh: \`%s\` failed (line %s)\n" "$BASH_COMMAND" "$LINENO" >&2' ERR

FROM="" APPLY=0 PREFIX="" CTRD_CONFIG="" CTRD_VERSION=""
while [ $# -gt 0 ]; do
    case "$1" in
        --from) FROM=${2:?--from needs a directory}; shift 2 ;;
        --apply) APPLY=1; shift ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --containerd-config) CTRD_CONFIG=${2:?--containerd-config needs a file}; shift 2 ;;
        --containerd-version) CTRD_VERSION=${2:?--containerd-version needs X.Y}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
PREFIX=${PREFIX%/}
if [ -n "$PREFIX" ]; then
    mkdir -p "$PREFIX"
    PREFIX=$(cd "$PREFIX" && pwd)
fi
BIN_DIR="$PREFIX/usr/local/bin"
ETC_DIR="$PREFIX/etc/containerd-shim-lazy"
CTRD_CONFIG=${CTRD_CONFIG:-$PREFIX/etc/containerd/config.toml}

[ -n "$PREFIX" ] || [ "$(id -u)" = 0 ] || die "run as root (or use --prefix DIR to install elsewhere)"

# --- binaries ------------------------------------------------------------------------------------
if [ -z "$FROM" ]; then
    for d in "$REPO/target/debug" "$REPO/target/release"; do
        if [ -x "$d/containerd-shim-lazy-v2" ]; then FROM=$d; break; fi
    done
    [ -n "$FROM" ] || die "no built binaries in $REPO/target/{debug,release}: run \`cargo build --bins\` first, or pass --from DIR"
fi
for b in "${BINS[@]}"; do
    [ -x "$FROM/$b" ] || die "$FROM/$b not found or not executable (build with \`cargo build --bins\`, or pass --from DIR)"
done

# Installs $1 as $2 with mode $3 unless identical; the rename keeps a running shim's binary intact.
install_file() {
    local src=$1 dst=$2 mode=$3
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        printf '  unchanged  %s\n' "$dst"
        return
    fi
    mkdir -p "$(dirname "$dst")"
    install -m "$mode" "$src" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
    printf '  installed  %s\n' "$dst"
}

echo "==> binaries from $FROM"
for b in "${BINS[@]}"; do install_file "$FROM/$b" "$BIN_DIR/$b" 0755; done

# --- shim profiles -------------------------------------------------------------------------------
# A profile the admin has edited is kept; ours goes beside it as .new.
echo "==> shim profiles"
mkdir -p "$ETC_DIR"
for p in "${PROFILES[@]}"; do
    src="$HERE/shim/$p.toml" dst="$ETC_DIR/$p.toml"
    [ -f "$src" ] || die "$src is missing from this checkout"
    if [ -f "$dst" ] && ! cmp -s "$src" "$dst"; then
        install -m 0644 "$src" "$dst.new"
        printf '  kept       %s (it differs from ours: compare with %s.new)\n' "$dst" "$dst"
    else
        install_file "$src" "$dst" 0644
    fi
done

# --- FUSE over io_uring --------------------------------------------------------------------------
# The kernel offers FUSE over io_uring (Linux 6.14+) only while the fuse module's enable_uring
# parameter is on; the shim then answers each request on the CPU that made it (README: How it
# works). On now (unless installing under --prefix), and at every boot: a modprobe option where fuse
# is a module, a tmpfiles.d line where it is built in.
echo "==> FUSE over io_uring"
install_file "$HERE/host/modprobe.conf" "$PREFIX/etc/modprobe.d/containerd-shim-lazy.conf" 0644
install_file "$HERE/host/tmpfiles.conf" "$PREFIX/etc/tmpfiles.d/containerd-shim-lazy.conf" 0644
URING_KNOB=/sys/module/fuse/parameters/enable_uring
if [ -n "$PREFIX" ]; then
    :
elif [ ! -e "$URING_KNOB" ]; then
    echo "  this kernel has no FUSE over io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING): the shim uses /dev/fuse"
elif [ "$(cat "$URING_KNOB")" = Y ]; then
    echo "  unchanged  $URING_KNOB = Y"
elif echo Y >"$URING_KNOB" 2>/dev/null; then
    echo "  set        $URING_KNOB = Y (mounts made from now on use it)"
else
    echo "  cannot set $URING_KNOB: the shim uses /dev/fuse until it is Y"
fi

# --- containerd config ---------------------------------------------------------------------------
# The snippet follows the config file's own `version` (containerd 2.x still reads version 2 files);
# without a file, containerd's version decides: 1.6/1.7 -> version 2, 2.x -> version 3.
echo "==> containerd"
DETECTED=0
if [ -z "$CTRD_VERSION" ]; then
    if command -v containerd >/dev/null 2>&1; then
        CTRD_VERSION=$(containerd --version | awk '{ print $3 }' | sed 's/^v//' | grep -oE '^[0-9]+\.[0-9]+' || true)
        [ -n "$CTRD_VERSION" ] && DETECTED=1
    fi
fi
file_version=""
if [ -f "$CTRD_CONFIG" ]; then
    file_version=$(sed -nE 's/^[[:space:]]*version[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p' "$CTRD_CONFIG" | head -n 1)
fi
case "$file_version" in
    2) snippet=config-v2.toml ;;
    3) snippet=config-v3.toml ;;
    "")
        case "$CTRD_VERSION" in
            1.6* | 1.7*) snippet=config-v2.toml ;;
            2.*) snippet=config-v3.toml ;;
            "") die "cannot tell containerd's version (is it installed?): pass --containerd-version X.Y" ;;
            *) die "containerd $CTRD_VERSION is not supported (1.6, 1.7 and 2.x are)" ;;
        esac
        ;;
    *) die "$CTRD_CONFIG says version = $file_version; only config versions 2 and 3 are supported" ;;
esac
case "$snippet:$CTRD_VERSION" in
    config-v3.toml:1.*) die "$CTRD_CONFIG is a version 3 config but containerd is $CTRD_VERSION (needs version 2)" ;;
esac
SNIPPET="$HERE/containerd/$snippet"
echo "  containerd ${CTRD_VERSION:-(version not checked)}, config $CTRD_CONFIG${file_version:+ (version $file_version)}: snippet $SNIPPET"

has_handler() { grep -qE "^[[:space:]]*\[plugins\.\"[^\"]+\"\.containerd\.runtimes\.\"?$1\"?\]" "$CTRD_CONFIG" 2>/dev/null; }
present=0
for p in "${PROFILES[@]}"; do has_handler "$p" && present=$((present + 1)); done

if [ "$present" = "${#PROFILES[@]}" ]; then
    echo "  the lazy and lazy-sandbox handlers are already in $CTRD_CONFIG: nothing to merge"
elif [ "$present" != 0 ]; then
    die "$CTRD_CONFIG defines only some of the handlers (${PROFILES[*]}): merge the rest of $SNIPPET by hand"
elif [ "$APPLY" = 1 ]; then
    mkdir -p "$(dirname "$CTRD_CONFIG")"
    if [ -f "$CTRD_CONFIG" ]; then
        backup="$CTRD_CONFIG.bak.$(date +%Y%m%d-%H%M%S)"
        cp -p "$CTRD_CONFIG" "$backup"
        echo "  backup     $backup"
        # The file has its own `version` line: append the tables only.
        { printf '\n# Added by containerd-shim-lazy install.sh on %s\n' "$(date -u +%FT%TZ)"; grep -vE '^[[:space:]]*(version[[:space:]]*=|#)' "$SNIPPET"; } >>"$CTRD_CONFIG"
    else
        backup=""
        cp "$SNIPPET" "$CTRD_CONFIG"
    fi
    # The installed containerd parses the result (when it is the one the file is for); a broken
    # file is put back as it was.
    if [ "$DETECTED" = 1 ] && ! containerd --config "$CTRD_CONFIG" config dump >/dev/null 2>"$CTRD_CONFIG.check.err"; then
        err=$(cat "$CTRD_CONFIG.check.err")
        rm -f "$CTRD_CONFIG.check.err"
        if [ -n "$backup" ]; then cp -p "$backup" "$CTRD_CONFIG"; else rm -f "$CTRD_CONFIG"; fi
        die "containerd cannot read $CTRD_CONFIG with the handlers appended, so it was restored: $err"
    fi
    rm -f "$CTRD_CONFIG.check.err"
    echo "  appended   the lazy and lazy-sandbox handlers to $CTRD_CONFIG"
else
    echo
    echo "  Merge this into $CTRD_CONFIG (or rerun with --apply to append it, with a backup):"
    echo
    sed 's/^/    /' "$SNIPPET"
fi

cat <<EOF

==> next steps
  1. Restart containerd so it reads the handlers:   systemctl restart containerd
     (running containers keep running; the shim binary must be on containerd's PATH: $BIN_DIR is)
  2. Label the node so the RuntimeClasses schedule onto it:
       kubectl label node <node-name> containerd-shim-lazy/installed=true
  3. Create the RuntimeClasses once per cluster:    kubectl apply -f $HERE/kubernetes/
  4. Convert an image and run it: see examples/pod.yaml (lazyctl convert SRC DST).
  Outside Kubernetes (ctr, nerdctl: no runtime options), the shim reads $ETC_DIR/config.toml:
       cp $ETC_DIR/lazy.toml $ETC_DIR/config.toml   (optional; a missing file means the defaults)
EOF
