#!/usr/bin/env bash
# Builds the plugin workspace for wasm32-unknown-unknown (release):
#   target/wasm32-unknown-unknown/release/{crm,erp,marketing,hostile,noop,parse}.wasm
#
#   ./build.sh                     build
#   ./build.sh --dist              build, then copy crm/erp/marketing to dist/ and
#                                  write dist/SOURCES.sha256 (see source-hash.sh)
#   ./build.sh --install-toolchain install Debian's wasm-capable toolchain first
#                                  when neither it nor a rustup wasm target exists (CI)
#
# Two toolchain routes:
#   - rustup with the wasm32-unknown-unknown target installed (a developer's
#     machine: `rustup target add wasm32-unknown-unknown`): plain cargo build.
#   - otherwise Debian's rustc-web/cargo-web/rust-web-src/lld-19, which has no
#     prebuilt std for wasm: std is built from source with -Zbuild-std
#     (RUSTC_BOOTSTRAP=1 lets that stable compiler accept the unstable flag).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

dist=0
install_toolchain=0
for arg in "$@"; do
    case "$arg" in
        --dist) dist=1 ;;
        --install-toolchain) install_toolchain=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

target=wasm32-unknown-unknown

# The plugins always build with their own flags (.cargo/config.toml) into their
# own target dir: flags or a target dir meant for the host build would either
# override the wasm stack size or mix two toolchains in one directory.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS CARGO_BUILD_TARGET_DIR \
      CARGO_BUILD_TARGET RUSTC_WRAPPER CARGO_BUILD_RUSTC_WRAPPER
export CARGO_TARGET_DIR="$here/target"

have_rustup_target() {
    rustup target list --installed 2>/dev/null | grep -q "^$target\$"
}

start=$SECONDS
if have_rustup_target; then
    echo "build.sh: using rustup's $target target" >&2
    cargo build --release --target "$target" --workspace
else
    if [[ ! -x /usr/bin/rustc || ! -x /usr/bin/cargo || ! -x /usr/lib/llvm-19/bin/wasm-ld \
          || ! -d /usr/lib/rustlib/src/rust/library ]]; then
        if (( install_toolchain )); then
            echo "build.sh: installing Debian's wasm toolchain" >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get update
            apt-get install -y rustc-web cargo-web rust-web-src lld-19
        else
            echo "build.sh: no wasm toolchain: run 'rustup target add $target'," >&2
            echo "          or rerun with --install-toolchain (Debian packages, needs root)" >&2
            exit 1
        fi
    fi
    echo "build.sh: using Debian's toolchain with -Zbuild-std" >&2
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=/usr/lib/llvm-19/bin/wasm-ld \
        /usr/bin/cargo build --release --target "$target" --workspace \
        -Zbuild-std=std,panic_abort
fi
echo "build.sh: built in $((SECONDS - start)) s" >&2

out="$here/target/$target/release"
for plugin in crm erp marketing hostile noop parse; do
    [[ -f "$out/$plugin.wasm" ]] || { echo "build.sh: missing $out/$plugin.wasm" >&2; exit 1; }
done

if (( dist )); then
    mkdir -p "$here/dist"
    for plugin in crm erp marketing; do
        cp "$out/$plugin.wasm" "$here/dist/$plugin.wasm"
    done
    "$here/source-hash.sh" > "$here/dist/SOURCES.sha256"
    echo "build.sh: dist/ updated (sources $(cat "$here/dist/SOURCES.sha256"))" >&2
fi

ls -l "$out"/{crm,erp,marketing,hostile,noop,parse}.wasm
