"""Smoke tests of the public API, run against the freshly built wheel in an empty venv (`make test-wheel`).

They catch files missing from the wheel (stubs, py.typed, kernels, submodules) and build leftovers in it.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import seqkv

REPO = Path(__file__).resolve().parents[2]
INSTALLED = Path(seqkv.__file__).resolve().parent
#: a string constant naming a kernel source, as `_function("quantize.cu", ...)` does
_KERNEL_NAME = re.compile(r"^[\w-]+\.cu$")


def test_imports_the_installed_copy_not_the_checkout():
    assert Path(sysconfig.get_paths()["purelib"]).resolve() in INSTALLED.parents
    assert REPO / "python" not in INSTALLED.parents


def _built_wheel() -> str:
    wheels = glob.glob(str(REPO / "dist" / "*.whl"))
    if not wheels:
        pytest.skip("run through `make test-wheel`, which builds dist/*.whl first")
    (wheel,) = wheels
    return wheel


def _kernels_named_in_code() -> set[str]:
    names = set()
    for module in INSTALLED.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _KERNEL_NAME.match(node.value):
                names.add(node.value)
    return names


def test_wheel_contents_are_the_package_and_nothing_else():
    wheel = _built_wheel()
    assert "abi3" in os.path.basename(wheel)
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("seqkv/__init__.py", "seqkv/py.typed", "seqkv/_native/__init__.pyi", "seqkv/errors.py"):
        assert required in names
    assert any(n.startswith("seqkv/_native") and n.endswith(".so") for n in names)
    forbidden = (".gguf", ".json", ".skv", ".sqlite", "benches/", "tests/", "target/", ".pyc")
    package_files = [n for n in names if not n.split("/")[0].endswith(".dist-info")]
    assert not [n for n in package_files if any(f in n for f in forbidden)]


def test_wheel_ships_the_cuda_kernels():
    names = zipfile.ZipFile(_built_wheel()).namelist()
    shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("seqkv/cuda/kernels/") and n.endswith(".cu")}
    assert _kernels_named_in_code() <= shipped


def test_every_kernel_named_in_the_code_is_installed_where_kernel_dir_finds_it(monkeypatch):
    monkeypatch.delenv("SEQKV_CUDA_KERNELS", raising=False)
    kernels = seqkv.cuda.kernel_dir()
    assert INSTALLED in kernels.resolve().parents
    named = _kernels_named_in_code()
    assert {"quantize.cu", "residual.cu", "quantizers.cu", "engine.cu"} <= named
    missing = sorted(n for n in named if not (kernels / n).is_file())
    assert not missing, f"kernels named in seqkv's code but not installed in {kernels}: {missing}"


def test_installed_kernels_compile_on_a_gpu():
    cupy = pytest.importorskip("cupy", reason="compiling the kernels needs CuPy (seqkv[cuda])")
    if not seqkv.cuda.available():
        pytest.skip("compiling the kernels needs a CUDA device")
    for source in sorted(seqkv.cuda.kernel_dir().glob("*.cu")):
        cupy.RawModule(code=source.read_text(), options=("-std=c++17",)).compile()


def test_release_wheel_has_no_bench_hooks():
    hooks = ("_read_bench", "_spin_bench", "_set_gil_release_min_tokens")
    assert not [h for h in hooks if hasattr(seqkv.Trie, h)], "the wheel was built with the bench-hooks feature"


def test_version_matches_metadata():
    assert seqkv.__version__ == metadata.version("seqkv")


def test_error_hierarchy():
    assert issubclass(seqkv.InvalidInputError, seqkv.SeqkvError)
    assert issubclass(seqkv.InvalidInputError, ValueError)
    assert issubclass(seqkv.CorruptStreamError, seqkv.SeqkvError)


def test_coder_round_trip_from_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 1000)).astype(np.float32)
    symbols = rng.integers(0, 1000, size=32)
    data = seqkv.coding.coder.encode_logits(symbols, logits)
    np.testing.assert_array_equal(seqkv.coding.coder.decode_logits(data, logits), symbols)
    freqs = seqkv.coding.coder.quantize_logits(logits)
    assert (freqs.sum(axis=1) == 1 << 24).all()


def test_container_rejects_garbage():
    with pytest.raises(seqkv.CorruptStreamError):
        seqkv.coding.container.unpack(b"SQKV" + b"\x00" * 8)


def test_trie_shares_prefixes():
    trie = seqkv.Trie()
    assert trie.insert([1, 2, 3, 4]) == 4
    assert trie.insert([1, 2, 9]) == 1
    match = trie.match_prefix([1, 2, 3, 7])
    assert match.length == 3
    assert len(trie) == 5


@pytest.mark.parametrize("name", ["raw", "plt"])
def test_model_free_codecs_round_trip(name):
    tokens = np.array([5, 9, 5, 9, 5, 9, 1, 2, 3] * 20, dtype=np.int64)
    codec = seqkv.codecs.get(name, vocab_size=64)
    np.testing.assert_array_equal(codec.decode(codec.encode(tokens)), tokens)


def test_testing_helpers_work_and_name_their_extra():
    import importlib.util

    from seqkv import testing

    testing.assert_roundtrip(seqkv.codecs.get("raw", vocab_size=64), [1, 2, 63, 0])
    if importlib.util.find_spec("hypothesis") is None:  # the bare wheel venv of `make test-wheel`
        with pytest.raises(seqkv.MissingExtraError, match=r"seqkv\[testing\]"):
            testing.token_sequences(64)


def test_lazy_extras_do_not_load_torch():
    import sys

    assert "torch" not in sys.modules
