"""Model registry on plain files: ``<models root>/<name>/<version>/`` with ``metadata.json``.

A version directory holds the model's files (artifact, device baseline...) and ``metadata.json``
(name, version, parameters, threshold, metrics, the training data manifest, and the sha256 of
every other file); ``metadata.sha256`` holds the digest of ``metadata.json`` itself. Versions are
``v0001``, ``v0002``...; a version is published by renaming a complete staging directory, so a
reader never sees half a version. Loading verifies every digest and refuses a tampered version.

Champion / challenger: ``<name>/champion.json`` names the version scoring uses by default (``promote``,
``pipelines.train --promote``); other versions are challengers, scored side by side with
``pipelines.score --rescore --model_version NAME=VERSION``. Without a champion the latest version is
the default (registries from before promotion).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

METADATA = "metadata.json"
METADATA_DIGEST = "metadata.sha256"
CHAMPION = "champion.json"
_VERSION = re.compile(r"^v(\d{4,})$")


class TamperedModelError(RuntimeError):
    """A model file does not match the digest recorded when the version was saved."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(root: str | Path, name: str) -> list[str]:
    d = Path(root) / name
    if not d.is_dir():
        return []
    return sorted((p.name for p in d.iterdir() if p.is_dir() and _VERSION.match(p.name)),
                  key=lambda v: int(v[1:]))


def latest_version(root: str | Path, name: str) -> str | None:
    v = versions(root, name)
    return v[-1] if v else None


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    metadata: dict

    def file(self, name: str) -> Path:
        return self.path / name


def save(root: str | Path, name: str, files: dict[str, bytes], metadata: dict) -> ModelVersion:
    """Publishes a new version of ``name`` with ``files`` (file name -> content) and ``metadata``."""
    base = Path(root) / name
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        digests = {}
        for fname, payload in sorted(files.items()):
            if fname in (METADATA, METADATA_DIGEST) or "/" in fname:
                raise ValueError(f"bad model file name {fname!r}")
            (staging / fname).write_bytes(payload)
            digests[fname] = hashlib.sha256(payload).hexdigest()
        while True:
            last = latest_version(root, name)
            version = f"v{(int(last[1:]) if last else 0) + 1:04d}"
            meta = dict(metadata, name=name, version=version, files=digests)
            text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
            (staging / METADATA).write_text(text)
            (staging / METADATA_DIGEST).write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")
            try:
                os.rename(staging, base / version)      # fails if a concurrent save took the number
                break
            except OSError:
                if not (base / version).exists():
                    raise
        return ModelVersion(name, version, base / version, meta)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def verify(path: str | Path) -> dict:
    """Checks every file of a version directory against its recorded digest; returns the metadata."""
    path = Path(path)
    meta_file = path / METADATA
    if not meta_file.exists():
        raise TamperedModelError(f"{path}: no {METADATA}")
    text = meta_file.read_bytes()
    recorded = (path / METADATA_DIGEST).read_text().strip() if (path / METADATA_DIGEST).exists() else None
    if recorded != hashlib.sha256(text).hexdigest():
        raise TamperedModelError(f"{meta_file}: sha256 does not match {METADATA_DIGEST}")
    meta = json.loads(text)
    for fname, digest in sorted(meta.get("files", {}).items()):
        f = path / fname
        if not f.exists():
            raise TamperedModelError(f"{f}: missing")
        if sha256_file(f) != digest:
            raise TamperedModelError(f"{f}: sha256 does not match the metadata (tampered or corrupt)")
    extra = {p.name for p in path.iterdir()} - set(meta.get("files", {})) - {METADATA, METADATA_DIGEST}
    if extra:
        raise TamperedModelError(f"{path}: files not in the metadata: {sorted(extra)}")
    return meta


def champion(root: str | Path, name: str) -> str | None:
    """The promoted version of ``name`` (None when none was promoted)."""
    path = Path(root) / name / CHAMPION
    if not path.exists():
        return None
    version = json.loads(path.read_text())["version"]
    if not (Path(root) / name / version).is_dir():
        raise FileNotFoundError(f"{path}: the champion {version} of model {name!r} does not exist")
    return version


def default_version(root: str | Path, name: str) -> str | None:
    """The version scoring uses when none is pinned: the champion, else the latest."""
    return champion(root, name) or latest_version(root, name)


def promote(root: str | Path, name: str, version: str, **info) -> dict:
    """Makes ``version`` (verified first) the champion of ``name``; returns the record written. The file
    is replaced atomically (a reader sees the old or the new champion)."""
    path = Path(root) / name / version
    if not path.is_dir():
        raise FileNotFoundError(f"no version {version} of model {name!r} under {root}")
    verify(path)
    record = dict(info, name=name, version=version, previous=champion(root, name))
    staging = Path(root) / name / f".{CHAMPION}.{uuid.uuid4().hex}"
    staging.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(staging, Path(root) / name / CHAMPION)
    return record


def load(root: str | Path, name: str, version: str | None = None) -> ModelVersion:
    """A verified version of ``name`` (default: the champion, else the latest)."""
    version = version or default_version(root, name)
    if version is None:
        raise FileNotFoundError(f"no versions of model {name!r} under {root}")
    path = Path(root) / name / version
    return ModelVersion(name, version, path, verify(path))


def read_verified(path: str | Path, fname: str) -> bytes:
    """The content of one file of a version, checked against the (verified) metadata digest.
    Reads the bytes once, so what is checked is what is used."""
    meta = verify(path)
    payload = (Path(path) / fname).read_bytes()
    if hashlib.sha256(payload).hexdigest() != meta["files"].get(fname):
        raise TamperedModelError(f"{path}/{fname}: sha256 does not match the metadata")
    return payload
