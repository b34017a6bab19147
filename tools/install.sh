#!/usr/bin/env bash
# Install codetr and its dependencies into the active Python environment.
#
#   python3 -m venv .venv && . .venv/bin/activate   # or a conda env
#   bash tools/install.sh
#
# Safe to rerun: every step first checks whether it is already done, so a
# second run takes seconds. Steps:
#   1. torch: an installed torch is kept; otherwise torch==$TORCH_VERSION.
#   2. build tools: setuptools<81 (mmcv 2.1.0's setup.py imports
#      pkg_resources), wheel, ninja.
#   3. mmcv 2.1.0 with its compiled ops, built from source once per
#      torch/python/CUDA combination and cached as a wheel.
#   4. mmengine, mmdet and the other requirements, never changing torch;
#      then the optional requirements/deploy.txt (onnx, onnxruntime).
#   5. this repository in editable mode, so `projects.codetr` imports from
#      any directory.
#   6. tools/check_install.py; the script exits non-zero if it fails.
#
# Environment variables:
#   PYTHON             interpreter to install into (default: python, else
#                      python3)
#   TORCH_VERSION      torch to install when none is present (2.13.0)
#   TORCH_INDEX_URL    index for that torch, e.g.
#                      https://download.pytorch.org/whl/cpu for a CPU build
#   CODETR_CACHE       where built mmcv wheels are kept (~/.cache/codetr)
#   TORCH_CUDA_ARCH_LIST  GPU architectures to compile mmcv for, e.g.
#                      "8.0;9.0"; default: those of the visible GPUs
#   MAX_JOBS           parallel compile jobs (default: number of CPUs)
#   CODETR_ALLOW_SYSTEM_PYTHON=1  install with `pip --user` when no virtual
#                      or conda environment is active (refused otherwise)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START=$SECONDS
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
CACHE="${CODETR_CACHE:-$HOME/.cache/codetr}"
MMCV_VERSION="$(sed -n 's/^mmcv==\([0-9.]*\).*/\1/p' \
    "$REPO_ROOT/requirements/mmcv.txt")"

log() { printf '[install %4ss] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif command -v python >/dev/null 2>&1; then
    PY=python
else
    PY=python3
fi
command -v "$PY" >/dev/null 2>&1 || die "Python interpreter '$PY' not found."
[[ -n "$MMCV_VERSION" ]] || die "no mmcv==X pin in requirements/mmcv.txt."

# --- 0. Which environment? --------------------------------------------------
# A venv has sys.prefix != sys.base_prefix; a conda env has conda-meta/.
IN_ENV="$("$PY" -c 'import os, sys
print(int(sys.prefix != sys.base_prefix
          or os.path.isdir(os.path.join(sys.prefix, "conda-meta"))))')"
PIP=("$PY" -m pip)
if [[ "$IN_ENV" != 1 ]]; then
    if [[ "${CODETR_ALLOW_SYSTEM_PYTHON:-0}" != 1 ]]; then
        die "$PY ($("$PY" -c 'import sys; print(sys.executable)')) is not in \
a virtual or conda environment, and installing torch and mmcv into the \
system Python is refused. Create one first:
    python3 -m venv .venv && . .venv/bin/activate && bash tools/install.sh
or set CODETR_ALLOW_SYSTEM_PYTHON=1 to install into the user site with \
'pip install --user'."
    fi
    log "no virtual environment active: installing with 'pip --user'."
    PIP_USER_FLAG=(--user)
else
    PIP_USER_FLAG=()
fi
# (The ${a[@]+...} form keeps `set -u` quiet about an empty array.)
pip_install() {
    "${PIP[@]}" install ${PIP_USER_FLAG[@]+"${PIP_USER_FLAG[@]}"} "$@"
}
PY_DESC="$("$PY" -c 'import platform as p, sys
print(sys.executable, p.python_version())')"
log "python: $PY_DESC"

# --- 1. torch ---------------------------------------------------------------
if TORCH_INSTALLED="$("$PY" -c 'import torch; print(torch.__version__)' \
        2>/dev/null)"; then
    log "torch $TORCH_INSTALLED already installed: keeping it."
else
    log "installing torch==$TORCH_VERSION${TORCH_INDEX_URL:+ from \
$TORCH_INDEX_URL}"
    pip_install "torch==$TORCH_VERSION" \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    TORCH_INSTALLED="$("$PY" -c 'import torch; print(torch.__version__)')"
fi

# Constraints for every later pip call: nothing may replace torch or mmcv.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==%s\nmmcv==%s\n' "$TORCH_INSTALLED" "$MMCV_VERSION" \
    >"$CONSTRAINTS"

# --- 2. build tools ---------------------------------------------------------
if ! "$PY" - <<'EOF' 2>/dev/null; then
import importlib.metadata as md, ninja, wheel  # noqa: F401
major = int(md.version('setuptools').split('.')[0])
assert 64 <= major < 81, major
EOF
    log "installing build tools: setuptools>=64,<81 wheel ninja"
    pip_install --quiet "setuptools>=64,<81" wheel ninja -c "$CONSTRAINTS"
else
    log "build tools (setuptools>=64,<81, wheel, ninja) present."
fi

# --- 3. mmcv with ops -------------------------------------------------------
# Everything the build depends on is printed as shell assignments:
#   WANT_CUDA   1 when torch has CUDA and nvcc is found (FORCE_CUDA=1 build)
#   ARCH_LIST   TORCH_CUDA_ARCH_LIST to build for (empty: torch's default)
#   TAG         cache directory name, e.g. torch2.13.0+cpu-cp311-cpu or
#               torch2.13.0+cu128-cp311-cu128-sm80_90
#   MMCV_OK     1 when mmcv $MMCV_VERSION is installed, its ops import and
#               it has CUDA if WANT_CUDA
PROBE="$(MMCV_VERSION="$MMCV_VERSION" "$PY" - <<'EOF'
import contextlib, os, re, shlex, subprocess, sys

# Only the assignments at the end may reach stdout, which the shell evals.
quiet = contextlib.redirect_stdout(sys.stderr)
quiet.__enter__()
import torch
from torch.utils import cpp_extension

pytag = f'cp{sys.version_info.major}{sys.version_info.minor}'
nvcc = (os.path.join(cpp_extension.CUDA_HOME, 'bin', 'nvcc')
        if cpp_extension.CUDA_HOME else '')
want_cuda = bool(torch.version.cuda and nvcc and os.path.exists(nvcc))
arch_list = os.environ.get('TORCH_CUDA_ARCH_LIST', '')
device = 'cpu'
if want_cuda:
    out = subprocess.run([nvcc, '--version'], capture_output=True,
                         text=True).stdout
    release = re.search(r'release (\d+)\.(\d+)', out)
    device = 'cu' + ''.join(release.groups()) if release else 'cuunknown'
    if not arch_list and torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i)
                       for i in range(torch.cuda.device_count())})
        arch_list = ';'.join(f'{a}.{b}' for a, b in caps)
    arch = re.sub(r'[^0-9A-Za-z+]+', '_', arch_list.replace('.', ''))
    device += '-sm' + (arch or 'default')

mmcv_ok = 0
try:
    import mmcv
    import mmcv._ext  # noqa: F401
    from mmcv.ops import (MultiScaleDeformableAttention, RoIAlign,  # noqa
                          get_compiling_cuda_version, nms)
    has_cuda = get_compiling_cuda_version() != 'not available'
    mmcv_ok = int(mmcv.__version__ == os.environ['MMCV_VERSION']
                  and (has_cuda or not want_cuda))
except Exception:
    pass
quiet.__exit__(None, None, None)
for key, value in dict(WANT_CUDA=int(want_cuda), ARCH_LIST=arch_list,
                       TAG=f'torch{torch.__version__}-{pytag}-{device}',
                       MMCV_OK=mmcv_ok).items():
    print(f'{key}={shlex.quote(str(value))}')
EOF
)" || die "could not inspect torch/mmcv with $PY (see the error above)."
eval "$PROBE"

# Prints the mmcv $MMCV_VERSION wheel in directory $1, if there is one.
find_wheel() {
    local wheel
    for wheel in "$1"/mmcv-"$MMCV_VERSION"-*.whl; do
        if [[ -f "$wheel" ]]; then
            echo "$wheel"
            return
        fi
    done
}

if [[ "$MMCV_OK" == 1 ]]; then
    log "mmcv $MMCV_VERSION with ops already installed: keeping it."
else
    WHEEL_DIR="$CACHE/wheels/$TAG"
    WHEEL="$(find_wheel "$WHEEL_DIR")"
    if [[ -z "$WHEEL" ]]; then
        BUILD_LOG="$CACHE/build/mmcv-$MMCV_VERSION-$TAG.log"
        mkdir -p "$CACHE/build" "$WHEEL_DIR"
        BUILD_ENV=(MMCV_WITH_OPS=1 "MAX_JOBS=${MAX_JOBS:-$(nproc)}")
        if [[ "$WANT_CUDA" == 1 ]]; then
            BUILD_ENV+=(FORCE_CUDA=1)
            if [[ -n "$ARCH_LIST" ]]; then
                BUILD_ENV+=("TORCH_CUDA_ARCH_LIST=$ARCH_LIST")
            fi
            log "building mmcv $MMCV_VERSION with CUDA ops for archs: \
${ARCH_LIST:-the torch default}."
        else
            log "building mmcv $MMCV_VERSION with CPU ops only" \
                "(CUDA ops need a CUDA torch and nvcc)."
        fi
        log "compiling mmcv's ops takes about 12 min on 2 cores for CPU ops, \
much longer with CUDA; it runs once: the wheel is cached in $WHEEL_DIR."
        log "build log: $BUILD_LOG"
        # --no-build-isolation: the build must see the installed torch, or
        # mmcv's setup.py silently skips the ops. --no-binary: never take a
        # prebuilt mmcv wheel made for another torch. --no-cache-dir: pip's
        # own wheel cache is keyed by the mmcv sdist only, so it would hand
        # back a wheel built against another torch or without CUDA; the
        # cache here is keyed by $TAG instead. The wheel goes to a
        # temporary directory first so that an interrupted build leaves no
        # wheel behind that a rerun would take for a good one.
        TMP_WHEELS="$(mktemp -d "$CACHE/build/wheels.XXXXXX")"
        # Success is judged by the wheel below, not by this pipeline.
        env "${BUILD_ENV[@]}" "${PIP[@]}" wheel --no-build-isolation \
            --no-deps --no-binary mmcv --no-cache-dir "mmcv==$MMCV_VERSION" \
            -w "$TMP_WHEELS" 2>&1 | tee "$BUILD_LOG" | grep --line-buffered \
            -E 'Building wheel|still running|Created wheel|ERROR|error:' \
            || true
        WHEEL="$(find_wheel "$TMP_WHEELS")"
        if [[ -z "$WHEEL" ]]; then
            tail -n 40 "$BUILD_LOG" >&2
            rm -rf "$TMP_WHEELS"
            die "building mmcv $MMCV_VERSION failed; full log: $BUILD_LOG"
        fi
        mv "$WHEEL" "$WHEEL_DIR/"
        rm -rf "$TMP_WHEELS"
        WHEEL="$WHEEL_DIR/$(basename "$WHEEL")"
        log "built $WHEEL"
    else
        log "using cached wheel $WHEEL"
    fi
    # --force-reinstall: replace an installed mmcv of the same version that
    # lacks its ops. --no-deps: its dependencies come in step 4.
    pip_install --quiet --force-reinstall --no-deps "$WHEEL"
fi

# --- 4. the other requirements ----------------------------------------------
log "installing requirements.txt (mmengine, mmdet, pycocotools, ...)"
pip_install --quiet -r "$REPO_ROOT/requirements.txt" -c "$CONSTRAINTS"

# --- 4b. optional deployment requirements -----------------------------------
# onnx and onnxruntime for tools/deploy/ and its test; skipped when the
# pinned versions are already installed.
if "$PY" - "$REPO_ROOT/requirements/deploy.txt" <<'EOF' 2>/dev/null; then
import importlib.metadata as md, re, sys
for line in open(sys.argv[1]):
    pin = re.match(r'^([A-Za-z0-9_.-]+)==(\S+)', line.strip())
    if pin:
        assert md.version(pin.group(1)) == pin.group(2), pin.group(1)
EOF
    log "deployment requirements (requirements/deploy.txt) present."
else
    log "installing requirements/deploy.txt (onnx, onnxruntime)"
    pip_install --quiet -r "$REPO_ROOT/requirements/deploy.txt" \
        -c "$CONSTRAINTS"
fi

# --- 5. this repository -----------------------------------------------------
# Skipped when already installed in editable mode from this directory and
# the packaging files have not changed since.
if "$PY" - "$REPO_ROOT" <<'EOF'; then
import importlib.metadata as md, json, os, sys
root = sys.argv[1]
dist = md.distribution('codetr')
url = json.loads(dist.read_text('direct_url.json') or '{}')
assert url.get('dir_info', {}).get('editable'), 'not editable'
assert url.get('url') == 'file://' + root, url.get('url')
record = next(f for f in dist.files if f.name == 'direct_url.json')
installed = os.path.getmtime(record.locate())
for name in ('setup.cfg', 'pyproject.toml', 'requirements/runtime.txt'):
    assert os.path.getmtime(os.path.join(root, name)) < installed, name
EOF
    log "codetr already installed in editable mode from $REPO_ROOT."
else
    log "installing codetr in editable mode (pip install -e .)"
    pip_install --quiet --no-build-isolation --no-deps -e "$REPO_ROOT"
fi

# --- 6. verify --------------------------------------------------------------
# From a directory outside the repository: the plugin must import from
# anywhere, not only because the current directory happens to hold it.
log "checking the installation"
CHECK_DIR="$(mktemp -d)"
if (cd "$CHECK_DIR" && "$PY" "$REPO_ROOT/tools/check_install.py"); then
    rmdir "$CHECK_DIR"
    log "done in $((SECONDS - START)) s."
else
    rmdir "$CHECK_DIR"
    die "the installation check failed (see above)."
fi
