#!/usr/bin/env bash
# Creates .venv-bench/ at the repository root with the pinned PyTorch + transformers stack used by
# bench/torch_model.py and bench/model_speed.py. Idempotent: does nothing when the venv already holds
# exactly these requirements. See requirements.txt for why torch is installed with --no-deps.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(dirname "$here")/.venv-bench"
py="${PYTHON:-python3}"

stamp="$(cat "$here/requirements.txt" "$here/requirements-torch-libs.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$venv/.bench-stamp" && "$(cat "$venv/.bench-stamp")" == "$stamp" ]] \
    && "$venv/bin/python" -c "import torch, transformers, safetensors, numpy, PIL" 2>/dev/null; then
    echo "setup_venv: $venv is up to date"
    exit 0
fi

[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
pip=("$venv/bin/pip" install --disable-pip-version-check --quiet)
# transformers & co, with their dependencies resolved by pip (torch is not among them).
"${pip[@]}" $(grep -E '^[a-zA-Z]' "$here/requirements.txt" | grep -v '^torch==')
# torch without its CUDA meta-dependencies, plus only what it links against.
"${pip[@]}" --no-deps $(grep '^torch==' "$here/requirements.txt") -r "$here/requirements-torch-libs.txt"
"$venv/bin/python" -c "import torch, transformers; print('setup_venv: torch', torch.__version__, '| transformers', transformers.__version__)"
echo "$stamp" > "$venv/.bench-stamp"
