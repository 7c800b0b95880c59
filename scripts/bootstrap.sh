#!/usr/bin/env bash
# Bootstrap shared by `make up` and `make test`: idempotent, quiet when all is there.
#  1. the Debian packages prometheus, prometheus-alertmanager, prometheus-node-exporter and
#     postgresql when their binaries are missing (apt-get --no-install-recommends);
#  2. a virtual environment in .venv;
#  3. torch==2.13.0 only when no torch is importable (GPU hosts install their own build
#     first; a constraint keeps every other requirement on the torch that is there);
#  4. tunewatch itself (editable) with its Python dependencies, redone only when
#     pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TUNEWATCH_TORCH_VERSION:-2.13.0}"
say() { printf 'bootstrap: %s\n' "$*" >&2; }

# Debian's packages start their system services when installed on a host run by systemd: a
# Prometheus on :9090, Alertmanager on :9093, node_exporter on :9100, PostgreSQL on :5432,
# the very ports `make up` serves on, so the stack's first start would stop on a taken port.
# The bootstrap installs these packages for their binaries. For the length of its apt-get
# run it asks the packages' scripts not to start services (a policy-rc.d answering 101, as
# Debian image builders do; one already there is left as it is), then disables the units
# of the packages it installed, and says so. A package that was already installed, and its
# service, are never touched.
POLICY_RC=/usr/sbin/policy-rc.d
OWN_POLICY=""
SUDO=""
# The packages this script installs whose Debian package ships a unit of the same name
# (a case, not an associative array: macOS's bash 3.2 must still reach the "install these"
# message).
service_unit() {
    case "$1" in
        prometheus | prometheus-alertmanager | prometheus-node-exporter | postgresql \
            | victoria-metrics) echo "$1.service" ;;
    esac
}
drop_policy() { if [ -n "$OWN_POLICY" ]; then $SUDO rm -f "$POLICY_RC"; OWN_POLICY=""; fi; }
trap drop_policy EXIT
systemd_host() { [ -d /run/systemd/system ]; }

# apt_install [--quiet] PKG...: apt-get install (no recommends; --quiet: its errors too go
# unprinted) with no service started meanwhile, then the installed packages' services
# disabled (systemd hosts only).
apt_install() {
    local quiet=""
    if [ "$1" = --quiet ]; then quiet=1; shift; fi
    if systemd_host && [ ! -e "$POLICY_RC" ]; then
        printf '#!/bin/sh\n# tunewatch scripts/bootstrap.sh: no service starts during its apt-get run\nexit 101\n' \
            | $SUDO tee "$POLICY_RC" >/dev/null
        $SUDO chmod 755 "$POLICY_RC"
        OWN_POLICY=1
    fi
    local rc=0 install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
                        --no-install-recommends "$@")
    if [ -n "$quiet" ]; then
        $SUDO "${install[@]}" >/dev/null 2>&1 || rc=$?
    else
        $SUDO "${install[@]}" >/dev/null || rc=$?
    fi
    drop_policy
    [ "$rc" -eq 0 ] || return "$rc"
    systemd_host || return 0
    local units=() pkg unit
    for pkg in "$@"; do
        unit="$(service_unit "$pkg")"
        if [ -n "$unit" ]; then units+=("$unit"); fi
    done
    [ "${#units[@]}" -gt 0 ] || return 0
    $SUDO systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
    say "disabled the system services of the packages just installed (${units[*]}):" \
        "make up runs its own on their ports; systemctl enable --now NAME brings one back"
}

postgres_present() {
    command -v postgres >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

missing_packages() {
    local pkgs=()
    { command -v prometheus >/dev/null && command -v promtool >/dev/null; } || pkgs+=(prometheus)
    { command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null; } \
        || pkgs+=(prometheus-alertmanager)
    command -v prometheus-node-exporter >/dev/null || pkgs+=(prometheus-node-exporter)
    { postgres_present && command -v psql >/dev/null; } || pkgs+=(postgresql)
    echo "${pkgs[@]:-}"
}

install_debian_packages() {
    local pkgs
    pkgs="$(missing_packages)"
    [ -z "$pkgs" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; fi
    fi
    if ! command -v apt-get >/dev/null || { [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; }; then
        say "missing system packages: $pkgs"
        say "install them, then run this again, e.g. on Debian/Ubuntu as root:"
        say "  apt-get install --no-install-recommends $pkgs"
        say "(elsewhere: Prometheus >= 2.40 with promtool, Alertmanager >= 0.25 with amtool,"
        say " node_exporter, PostgreSQL >= 13, with prometheus-alertmanager and"
        say " prometheus-node-exporter on PATH under those names)"
        exit 1
    fi
    say "installing Debian packages: $pkgs"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt_install $pkgs || { say "apt-get install $pkgs failed"; exit 1; }
    local still
    still="$(missing_packages)"
    if [ -n "$still" ]; then say "still missing after apt-get: $still"; exit 1; fi
}

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    fi
}

install_torch() {
    if ! "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
        say "installing torch==$TORCH_VERSION (none importable in $VENV)"
        "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
    fi
}

install_project() {
    local stamp="$VENV/.tunewatch-installed" want have="" torch_now constraints
    torch_now="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)"
    want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) torch=$torch_now"
    [ -f "$stamp" ] && have="$(cat "$stamp")"
    if [ "$want" = "$have" ] && "$VENV/bin/python" -c 'import tunewatch, transformers' 2>/dev/null; then
        return 0
    fi
    say "installing tunewatch and its Python dependencies into $VENV"
    constraints="$(mktemp)"
    echo "torch==$torch_now" >"$constraints"
    # constraints.txt (make lock) pins every dependency but torch, which stays as found.
    "$VENV/bin/python" -m pip install -q -c "$constraints" -c constraints.txt -e ".[dev]"
    rm -f "$constraints"
    echo "$want" >"$stamp"
}

# Optional, for `make test` only (TUNEWATCH_BOOTSTRAP_OPTIONAL=1): VictoriaMetrics, which the
# remote_write test uses; where it cannot be installed, that test skips and says so.
install_optional_packages() {
    [ "${TUNEWATCH_BOOTSTRAP_OPTIONAL:-0}" = 1 ] || return 0
    command -v victoria-metrics >/dev/null && return 0
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null || return 0
    if apt_install --quiet victoria-metrics \
        || { env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
             && apt_install --quiet victoria-metrics; }; then
        say "installed the optional Debian package victoria-metrics (remote_write test)"
    else
        say "optional victoria-metrics not installable here; its test will be skipped"
    fi
}

install_debian_packages
install_optional_packages
make_venv
install_torch
install_project
