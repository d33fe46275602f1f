#!/usr/bin/env bash
# Download into .whl/ the wheels that bench/gpu_check.sh installs on a GPU machine with no network.
#
#   bash bench/gpu_wheels.sh            # needs PyPI; writes .whl/ (about 45 MB; .whl/ is git-ignored)
#
# The GPU machine is expected to have python3 (3.12) with torch, torchvision, timm, numpy, OpenCV,
# scikit-learn and safetensors. What vivi's check needs beyond that, at the versions vivi is tested
# with (pyproject.toml lists vivi's dependencies; the rest are imported only by commands the check
# does not run: onnxruntime by `vivi detect`, fsspec/s3fs by URLs, matplotlib by reports,
# tensorboard optionally by training):
#   av                      decoding and writing H.264 (synth, ingest)
#   kornia, kornia_rs       AutoAugment (the -aa presets)
#   tqdm, pyyaml            progress bars, presets (usually present already: timm needs them)
#   pytest, pluggy, iniconfig, pygments, packaging    the CUDA tests
# Pure-Python wheels (py3-none-any) match any --platform, so one command fetches them all.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(av==18.1.0 kornia==0.9.0 kornia_rs==0.2.0 tqdm==4.70.1 pyyaml==6.0.4
        pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 packaging==26.4)
python3 -m pip download --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
