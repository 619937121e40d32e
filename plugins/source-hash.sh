#!/usr/bin/env bash
# Prints the hash of the sources the distributed plugins (dist/) are built from,
# so a test can tell whether dist/ is stale without rebuilding anything.
#
# Algorithm (the Rust side reimplements it; keep both in step):
#   1. Inputs, as paths relative to plugins/:
#        wit/*.wit                      (top level of wit/ only)
#        Cargo.toml  Cargo.lock  .cargo/config.toml
#        {sdk,crm,erp,marketing}/Cargo.toml
#        {sdk,crm,erp,marketing}/src/**/*.rs   (recursive)
#      The test and bench fixtures (fixtures/*) are deliberately not inputs:
#      they are not in dist/.
#   2. Sort the relative paths by bytes (LC_ALL=C sort).
#   3. For each path, one listing line "<sha256 hex of the file>  <relpath>\n"
#      (lower-case hex, two spaces: exactly what `sha256sum` prints).
#   4. The result is the lower-case sha256 hex of the whole listing.
# Paths are plain ASCII without spaces, backslashes or newlines, so sha256sum
# prints them verbatim.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "${BASH_SOURCE[0]}")"

{
    ls wit/*.wit
    printf '%s\n' Cargo.toml Cargo.lock .cargo/config.toml
    for crate in sdk crm erp marketing; do
        printf '%s\n' "$crate/Cargo.toml"
        find "$crate/src" -type f -name '*.rs'
    done
} | sort | while IFS= read -r path; do
    sha256sum -- "$path"
done | sha256sum | cut -d' ' -f1
