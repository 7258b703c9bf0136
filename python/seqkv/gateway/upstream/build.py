"""Build ``llama-server`` once from the llama.cpp tree vendored in the llama-cpp-python sdist.

``python -m seqkv.gateway.upstream.build`` (``make llama-server``): downloads the sdist from
PyPI (its SHA-256 checked against the index), unpacks it under ``<cache>/src`` and builds only
the ``llama-server`` target into ``<cache>/llama.cpp-VERSION/build`` with Debian's cmake and the
C/C++ compiler, CPU only, no curl, no OpenSSL, no web UI download (``<cache>``: the model
cache's root, ``$SEQKV_CACHE_DIR``, else ``$XDG_CACHE_HOME/seqkv``, else ``~/.cache/seqkv``).
A later run finds the binary and does nothing; an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

from .process import LLAMA_CPP_VERSION, default_build_dir, default_source_dir

__all__ = ["build_llama_server"]

_INDEX = "https://pypi.org/simple/llama-cpp-python/"
_CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DBUILD_SHARED_LIBS=OFF",
]


def _download_sdist(dest: Path) -> Path:
    name = f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    path = dest / name
    if path.is_file():
        return path
    req = urllib.request.Request(_INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    entry = next(f for f in files if f["filename"] == name)
    with urllib.request.urlopen(entry["url"], timeout=600) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != entry["hashes"]["sha256"]:
        raise SystemExit(f"{name}: SHA-256 differs from PyPI's index")
    dest.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def build_llama_server(jobs: int = 2) -> Path:
    build = default_build_dir()
    binary = build / "bin" / "llama-server"
    if binary.is_file():
        return binary
    src = default_source_dir()
    source = src / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        sdist = _download_sdist(src)
        with tarfile.open(sdist) as tar:
            tar.extractall(src, filter="data")
    t0 = time.monotonic()
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *_CMAKE_FLAGS], check=True)
    subprocess.run(["cmake", "--build", str(build), "-j", str(jobs), "--target", "llama-server"], check=True)
    print(f"llama-server built in {time.monotonic() - t0:.0f} s: {binary}", file=sys.stderr)
    return binary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    print(build_llama_server(p.parse_args().jobs))


if __name__ == "__main__":
    main()
