# Shared helpers for the project's shell entry points (sourced, not run).
step() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'sharpvisor: %s\n' "$*" >&2; exit 1; }

require_dotnet() {
    command -v dotnet >/dev/null 2>&1 || die "the .NET 10 SDK is required (dotnet not found on PATH)"
    local major
    major=$(dotnet --version 2>/dev/null | cut -d. -f1)
    [[ "${major:-0}" -ge 10 ]] || die "the .NET 10 SDK is required (found $(dotnet --version 2>/dev/null || echo none))"
    export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
}

# Installs Debian packages that are missing (as root, or through sudo when available).
apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    step "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# with_test_script BASE_INITRD SCRIPT OUT: writes OUT = BASE_INITRD followed by an uncompressed
# cpio layer holding SCRIPT as /test/run, which the default guest's init runs instead of its shell
# (Linux unpacks concatenated archives in order; each must start on a 4-byte boundary).
with_test_script() {
    local base=$1 script=$2 out=$3 dir size
    dir=$(mktemp -d)
    mkdir -p "$dir/test"
    printf '%s\n' "$script" >"$dir/test/run"
    chmod +x "$dir/test/run"
    cp "$base" "$out"
    size=$(stat -c %s "$out")
    head -c $(( (4 - size % 4) % 4 )) /dev/zero >>"$out"
    ( cd "$dir" && find . | cpio -o -H newc --quiet ) >>"$out"
    rm -rf "$dir"
}
