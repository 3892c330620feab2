#!/usr/bin/env bash
# A newer lavapipe (Mesa 26 from Debian 13's backports) for the tests of the
# cooperative-matrix kernel: Debian 12's lavapipe (Mesa 22.3) offers no cooperative
# matrices, Mesa 26's offers 8×8×8 f16 × f16 → f32 ones. It needs a newer C library than
# Debian 12's, so it is unpacked with its own libraries into a private root, and a program
# runs against it through that root's dynamic loader. Nothing is installed into the
# system; the mirror is the one the system's apt sources name.
#
#   scripts/newer-lavapipe.sh setup              download and unpack (once; kept)
#   scripts/newer-lavapipe.sh run PROGRAM [ARGS] run PROGRAM on it (sets it up first)
#
# As a cargo runner, for the mixed-precision tests (what .ci/run does):
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="scripts/newer-lavapipe.sh run" \
#     UNFOLD_REQUIRE_COOP=1 cargo test --test it -- mixed_precision
# Only the program itself runs there: programs it starts use the system's libraries.
set -euo pipefail

root="${UNFOLD_NEWER_LAVAPIPE:-/var/cache/unfold/lavapipe-trixie-backports}"
sysroot="$root/sysroot"
libdir="$sysroot/usr/lib/x86_64-linux-gnu"
icd="$root/lvp_icd.json"

# The Debian mirror of the system's apt sources (deb822 or one-line form).
mirror() {
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        tr ' ' '\n' | grep -v -- '-security' | grep '/debian/\?$' | head -n 1 || true)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
    fi
    [ -n "$uri" ] || { echo "newer-lavapipe: no Debian mirror in the apt sources" >&2; exit 1; }
    echo "$uri"
}

setup() {
    if [ -f "$icd" ] && [ -f "$libdir/libvulkan_lvp.so" ]; then
        return 0
    fi
    echo "newer-lavapipe: downloading Mesa's lavapipe from Debian 13's backports into $root" >&2
    local apt="$root/apt" uri keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    uri=$(mirror)
    rm -rf "$root"
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/cache" "$sysroot"
    : >"$apt/status"
    cat >"$apt/sources.list" <<EOF
deb [signed-by=$keyring] $uri trixie main
deb [signed-by=$keyring] $uri trixie-backports main
EOF
    # apt on its own lists, status (nothing installed: the whole dependency closure is
    # downloaded) and archive, so the system's own apt state is left alone
    local opts=(
        -o "Dir::Etc::SourceList=$apt/sources.list"
        -o "Dir::Etc::SourceParts=/nonexistent"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::State::Status=$apt/status"
        -o "Dir::Cache=$apt/cache"
        -o "Dir::Cache::Archives=$apt/archives"
        -o "Debug::NoLocking=1"
    )
    apt-get "${opts[@]}" -q update >&2
    DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" -q -y --download-only \
        -t trixie-backports install mesa-vulkan-drivers libvulkan1 >&2
    for deb in "$apt"/archives/*.deb; do
        dpkg-deb -x "$deb" "$sysroot"
    done
    [ -f "$libdir/libvulkan_lvp.so" ] || { echo "newer-lavapipe: no libvulkan_lvp.so unpacked" >&2; exit 1; }
    cat >"$icd" <<EOF
{
    "ICD": { "api_version": "1.4.0", "library_path": "$libdir/libvulkan_lvp.so" },
    "file_format_version": "1.0.1"
}
EOF
    rm -rf "$apt/archives" "$apt/lists"
}

case "${1:-}" in
setup)
    setup
    ;;
run)
    shift
    [ $# -ge 1 ] || { echo "usage: $0 run PROGRAM [ARGS]" >&2; exit 2; }
    setup
    export VK_ICD_FILENAMES="$icd" WGPU_BACKEND=vulkan WGPU_ADAPTER_NAME=llvmpipe
    export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
    exec "$libdir/ld-linux-x86-64.so.2" --library-path "$libdir" "$@"
    ;;
*)
    echo "usage: $0 setup | run PROGRAM [ARGS]" >&2
    exit 2
    ;;
esac
