"""Convert once, load in seconds: a verified on-disk cache of de-quantized GGUF models and of
the engine's packed weights.

Loading a GGUF through transformers de-quantizes every tensor and rebuilds the tokenizer each
time (a minute or more for SmolLM2 on a small machine). The first load writes the result here;
later loads read it back::

    <root>/models/<sha256 of the GGUF>/
        manifest.json         what the entry holds: the GGUF's hash and size, every file's size
                              and CRC-32C, the model's fingerprint, the library versions
        config.json           the model's config, exactly as ``config.to_dict()`` gave it
        model.safetensors     the float32 parameters (tied tensors stored once)
        tokenizer/            ``tokenizer.save_pretrained``
        engine-<dtype>-p<N>/  the engine's packed weights (``manifest.json``, ``weights.safetensors``);
                              ``<dtype>`` a block type (``q4_1``) for an engine on the GGUF's own
                              blocks, re-blocked for its kernels

``<root>`` is ``$SEQKV_CACHE_DIR``, else ``$XDG_CACHE_HOME/seqkv``, else ``~/.cache/seqkv``.

Every entry is written into a temporary folder beside its place and renamed into place, so a
reader sees a whole entry or none. A model entry is only kept after loading it back from the
temporary folder gave the same :func:`~seqkv.integrations.models.fingerprint` as the model
loaded from the GGUF. On load every file's size and CRC-32C is checked against the manifest
(and the library versions must match): an entry that fails is deleted and rebuilt, never used.
The fingerprint recorded in the manifest is then attached to the model, so it is not hashed
again. Which GGUF an entry belongs to is its SHA-256; the digest of a file is remembered by
path, size, mtime and inode (``<root>/models/gguf-index.json``), so an unchanged file is
hashed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import _native
from ..errors import SeqkvError

__all__ = [
    "CACHE_FORMAT",
    "cache_root",
    "gguf_sha256",
    "load_or_convert",
    "load_engine_state",
    "store_engine_state",
    "cached_engine_state",
    "gguf_path_of",
]

#: Layout of a cache entry (bump when the files or their meaning change).
CACHE_FORMAT = 1

_MANIFEST = "manifest.json"
_ENTRY_ATTR = "_seqkv_cache_entry"
_FP_ATTR = "_seqkv_fingerprint"
_GGUF_ATTR = "_seqkv_gguf_path"
_CHUNK = 16 << 20
_index_lock = threading.Lock()


class CacheEntryError(SeqkvError):
    """A cache entry is incomplete, corrupted or stale (it is rebuilt, never used)."""


def cache_root() -> Path:
    """The cache folder: ``$SEQKV_CACHE_DIR``, ``$XDG_CACHE_HOME/seqkv`` or ``~/.cache/seqkv``."""
    env = os.environ.get("SEQKV_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "seqkv"


def _models_dir() -> Path:
    return cache_root() / "models"


def _crc32c_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = _native.crc32c(chunk, crc)
    return crc


def _file_records(folder: Path) -> dict[str, dict[str, int]]:
    """Size and CRC-32C of every file under ``folder`` but the manifest (sub-entries excluded)."""
    out: dict[str, dict[str, int]] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_dir() or rel.name == _MANIFEST or rel.parts[0].startswith("engine-"):
            continue
        out[rel.as_posix()] = {"size": path.stat().st_size, "crc32c": _crc32c_file(path)}
    return out


def _versions() -> dict[str, str]:
    """The versions an entry depends on, from package metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"seqkv": _native.__version__}
    for name in ("torch", "transformers", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _read_verified_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder`` after checking every file it lists; raises CacheEntryError."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheEntryError(f"{folder}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise CacheEntryError(f"{folder}: cache format {manifest.get('format') if isinstance(manifest, dict) else None!r}")
    if manifest.get("versions") != _versions():
        raise CacheEntryError(f"{folder}: written by other library versions ({manifest.get('versions')})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CacheEntryError(f"{folder}: the manifest lists no files")
    for name, rec in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CacheEntryError(f"{folder}: {name} is missing") from exc
        if size != rec.get("size"):
            raise CacheEntryError(f"{folder}: {name} has {size} bytes, the manifest says {rec.get('size')}")
        if _crc32c_file(path) != rec.get("crc32c"):
            raise CacheEntryError(f"{folder}: {name} does not match its CRC-32C")
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    manifest = {"format": CACHE_FORMAT, "versions": _versions(), **manifest, "files": _file_records(folder)}
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target``, renamed to ``target`` when the block succeeds
    (dropped if another process put a valid entry there first, or if the block fails)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            try:
                _read_verified_manifest(target)
                return  # another writer finished first; its entry is as good as ours
            except CacheEntryError:
                _remove(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Moves a bad entry out of the way first (atomic), then deletes it."""
    doomed = folder.with_name(f".{folder.name}.bad-{os.getpid()}-{threading.get_ident()}")
    try:
        os.replace(folder, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


# -- which GGUF --------------------------------------------------------------------------------


def gguf_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file, remembered by (path, size, mtime, inode) so an unchanged file is
    hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    index_path = _models_dir() / "gguf-index.json"
    with _index_lock:
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            if not isinstance(index, dict):
                index = {}
        except (OSError, ValueError):
            index = {}
        digest = index.get(key)
        if isinstance(digest, str) and len(digest) == 64:
            return digest
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        digest = h.hexdigest()
        index = {k: v for k, v in index.items() if not k.startswith(f"{path}|")}
        index[key] = digest
        try:
            index_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".gguf-index.", dir=index_path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(index, f, indent=1, sort_keys=True)
            os.replace(tmp, index_path)
        except OSError:  # a read-only cache still works, it just hashes every time
            pass
        return digest


# -- models ------------------------------------------------------------------------------------


def _build_from_entry(folder: Path, manifest: dict[str, Any]) -> tuple[Any, Any]:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    from .fingerprints import TOKENIZER_ATTR, config_json

    config_dict = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = AutoConfig.for_model(**config_dict)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config)  # dtype= would change config.dtype
    state = load_file(str(folder / "model.safetensors"))
    tied: dict[str, str] = manifest.get("tied", {})
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) != set(tied):
        raise CacheEntryError(f"{folder}: parameters do not match the model (missing {missing}, unexpected {unexpected})")
    for name, source in tied.items():  # shared tensors are stored once: share them again
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(source))
    model.eval()
    if config_json(model) != manifest.get("config_json"):
        raise CacheEntryError(f"{folder}: the config does not rebuild to the recorded one")
    tokenizer = None
    if (folder / "tokenizer").is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        setattr(model, TOKENIZER_ATTR, tokenizer)
    return model, tokenizer


def _load_entry(folder: Path) -> tuple[Any, Any]:
    manifest = _read_verified_manifest(folder)
    model, tokenizer = _build_from_entry(folder, manifest)
    setattr(model, _FP_ATTR, bytes.fromhex(manifest["weights_digest"]))
    setattr(model, _ENTRY_ATTR, str(folder))
    return model, tokenizer


def _write_entry(tmp: Path, gguf: Path, sha: str, model: Any, tokenizer: Any) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_model

    from .fingerprints import config_json, fingerprint, weights_digest

    (tmp / "config.json").write_text(json.dumps(model.config.to_dict(), default=str, indent=1), encoding="utf-8")
    save_model(model, str(tmp / "model.safetensors"))
    with safe_open(str(tmp / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    state = model.state_dict()
    tied = {name: next((s for s in sorted(stored) if state[s].data_ptr() == t.data_ptr()), "")
            for name, t in state.items() if name not in stored}  # shared tensors save_model kept once
    if "" in tied.values():
        raise CacheEntryError(f"save_model left out tensors that share no storage: {sorted(tied)}")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
    _write_manifest(tmp, {
        "gguf": {"name": gguf.name, "sha256": sha, "size": gguf.stat().st_size},
        "config_json": config_json(model),
        "weights_digest": weights_digest(model).hex(),
        "fingerprint": fingerprint(model, tokenizer).hex(),
        "tied": tied,
    })


def _check_round_trip(tmp: Path, model: Any, tokenizer: Any) -> None:
    from .fingerprints import fingerprint, weights_digest

    manifest = _read_verified_manifest(tmp)
    back, back_tokenizer = _build_from_entry(tmp, manifest)
    if (fingerprint(back, back_tokenizer) != fingerprint(model, tokenizer)
            or weights_digest(back).hex() != manifest["weights_digest"]):
        raise CacheEntryError("the cached model does not reproduce the GGUF model's fingerprint")


def load_or_convert(gguf_path: str | os.PathLike[str], convert: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a GGUF: from the cache when a verified entry exists, else from
    ``convert()`` (the slow de-quantizing load), writing the entry for next time.

    A corrupted or stale entry is deleted and rebuilt. When the cache cannot be written (read-only
    folder, full disk) or the written entry does not reproduce the model's fingerprint, the
    converted model is returned all the same and nothing is cached.
    """
    gguf = Path(gguf_path)
    sha = gguf_sha256(gguf)
    folder = _models_dir() / sha
    if folder.exists():
        try:
            model, tokenizer = _load_entry(folder)
            setattr(model, _GGUF_ATTR, str(gguf.resolve()))
            return model, tokenizer
        except CacheEntryError as exc:
            print(f"seqkv: rebuilding the model cache: {exc}", file=sys.stderr)
            _remove(folder)
    from tqdm.auto import tqdm

    with tqdm(total=3, desc=f"seqkv: converting {gguf.name} once", unit="step", file=sys.stderr) as bar:
        bar.set_postfix_str("de-quantizing")
        model, tokenizer = convert()
        setattr(model, _GGUF_ATTR, str(gguf.resolve()))
        bar.update()
        try:
            with _staging(folder) as tmp:
                bar.set_postfix_str(f"writing {folder}")
                _write_entry(tmp, gguf, sha, model, tokenizer)
                bar.update()
                bar.set_postfix_str("verifying")
                _check_round_trip(tmp, model, tokenizer)
                bar.update()
        except (OSError, CacheEntryError) as exc:
            print(f"seqkv: not caching {gguf.name}: {exc}", file=sys.stderr)
            return model, tokenizer
    setattr(model, _ENTRY_ATTR, str(folder))
    return model, tokenizer


def gguf_path_of(model: Any) -> str | None:
    """The GGUF file a model returned by :func:`load_or_convert` was converted from, else ``None``."""
    return getattr(model, _GGUF_ATTR, None)


# -- engine weights ----------------------------------------------------------------------------


def _engine_folder(model: Any, dtype: str) -> Path | None:
    entry = getattr(model, _ENTRY_ATTR, None)
    if entry is None:
        return None
    return Path(entry) / f"engine-{dtype}-p{_native.engine.PACKED_STATE_VERSION}"


def load_engine_state(model: Any, dtype: str, source_fingerprint: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(config, arrays)`` of the engine's packed weights for a model loaded from the cache, if
    an entry for ``dtype`` exists, verifies and was built from a model with this fingerprint;
    else ``None`` (a bad entry is deleted)."""
    folder = _engine_folder(model, dtype)
    if folder is None or not folder.exists():
        return None
    from safetensors.numpy import load_file

    try:
        manifest = _read_verified_manifest(folder)
        if manifest.get("source_fingerprint") != source_fingerprint.hex() or manifest.get("dtype") != dtype:
            raise CacheEntryError(f"{folder}: built from another model or dtype")
        return manifest["config"], load_file(str(folder / "weights.safetensors"))
    except (CacheEntryError, OSError, ValueError, KeyError) as exc:
        print(f"seqkv: rebuilding the engine cache: {exc}", file=sys.stderr)
        _remove(folder)
        return None


def store_engine_state(model: Any, dtype: str, source_fingerprint: bytes, config: dict[str, Any],
                       arrays: dict[str, Any]) -> None:
    """Writes the engine's packed weights beside a cached model (no-op for other models)."""
    folder = _engine_folder(model, dtype)
    if folder is None:
        return
    from safetensors.numpy import save_file

    try:
        with _staging(folder) as tmp:
            save_file(arrays, str(tmp / "weights.safetensors"))
            _write_manifest(tmp, {"dtype": dtype, "source_fingerprint": source_fingerprint.hex(), "config": config})
    except OSError as exc:
        print(f"seqkv: not caching the engine weights: {exc}", file=sys.stderr)


def cached_engine_state(gguf_path: str | os.PathLike[str], dtype: str = "bf16") -> tuple[dict[str, Any], dict[str, Any], bytes] | None:
    """``(config, packed arrays, source fingerprint)`` of the engine weights an earlier
    ``Engine.from_hf`` of a cached GGUF stored (:meth:`seqkv.engine.cpu.Engine.from_cached_gguf`
    builds the engine from them without torch), else ``None``. The entry's files are checked
    (size and CRC-32C) first; a bad entry is deleted."""
    folder = _models_dir() / gguf_sha256(gguf_path)
    engine_dir = folder / f"engine-{dtype}-p{_native.engine.PACKED_STATE_VERSION}"
    if not engine_dir.exists():
        return None
    from safetensors.numpy import load_file

    try:
        manifest = _read_verified_manifest(engine_dir)
        model_manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("dtype") != dtype or manifest.get("source_fingerprint") != model_manifest.get("fingerprint"):
            raise CacheEntryError(f"{engine_dir}: not the engine of the cached model")
        return dict(manifest["config"]), load_file(str(engine_dir / "weights.safetensors")), bytes.fromhex(manifest["source_fingerprint"])
    except (SeqkvError, OSError, ValueError, KeyError) as exc:
        print(f"seqkv: not using the engine cache: {exc}", file=sys.stderr)
        _remove(engine_dir)
        return None
