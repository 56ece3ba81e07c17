"""Find an encoder's files: a local directory, a registered name, or a Hub repo ("org/repo[@rev]").

Downloads go through huggingface_hub into its normal cache. The cache is always tried first with
``local_files_only=True`` (``force_download=True`` skips it, to refresh a branch such as ``main``);
only on a miss is the network used, and only after a quick reachability probe through
huggingface_hub's own HTTP session (so HTTPS_PROXY / HTTP_PROXY and its other settings apply), so
an offline machine is told within seconds (huggingface_hub alone retries DNS failures for ~20 s)
what is missing, where the cache is, and how to make weights locally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ModelSource",
    "resolve_source",
    "fetch_model_files",
    "model_files",
    "OfflineError",
    "MODEL_FILES",
    "ONNX_FILES",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME)
ONNX_FILES = (CONFIG_NAME, ONNX_NAME)


class OfflineError(OSError):
    """The weights are not cached locally and the Hub cannot be reached."""


@dataclass(frozen=True)
class ModelSource:
    """Where an encoder lives: a local directory, or a Hub repo at a revision."""

    local_dir: Path | None = None
    repo_id: str | None = None
    revision: str | None = None


def resolve_source(name_or_path: str | os.PathLike, revision: str | None = None) -> ModelSource:
    """Local dir > registered name > "org/repo[@rev]"; anything else raises with suggestions."""
    from .registry import MODELS, get_model_info

    text = str(name_or_path)
    if not text.strip():
        raise ValueError("no model given: pass a model folder, org/repo[@rev] or a registered name (`lima-zoo models`)")
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource(local_dir=path)
    if text in MODELS:
        info = MODELS[text]
        return ModelSource(repo_id=info.hub_repo, revision=revision or info.revision)
    repo, _, rev = text.partition("@")
    if repo.count("/") == 1 and all(repo.split("/")) and not path.exists():
        return ModelSource(repo_id=repo, revision=revision or rev or None)
    if path.exists():
        raise ValueError(f"{text}: not a model directory (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
    get_model_info(text)  # raises "unknown model ... did you mean ..."
    raise AssertionError("unreachable")


def loaded_revision(files: dict[str, Path], source: ModelSource) -> str:
    """The commit a model was loaded at: its snapshot folder in the Hub cache (``snapshots/<sha>/``),
    else the revision asked for; "" for a local folder."""
    parent = next(iter(files.values())).parent
    if source.repo_id is not None and parent.parent.name == "snapshots":
        return parent.name
    return source.revision or ""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint answers an HTTP request within ``timeout`` s, asked through
    huggingface_hub's session: the proxies, certificates and endpoint it would download with. Any
    HTTP status is an answer (a proxy's 407 included); no answer is offline."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - httpx / requests / socket errors alike: the network did not answer
        return False


def _offline_message(source: ModelSource, cache_dir: str | None, why: str) -> str:
    from huggingface_hub import constants

    from .registry import MODELS

    cache = cache_dir or constants.HF_HUB_CACHE
    unpublished = [info for info in MODELS.values() if info.hub_repo == source.repo_id and not info.published]
    note = (
        f"  {unpublished[0].name} is a registered name, but no weights have been published for it yet.\n"
        if unpublished
        else ""
    )
    make = (
        "train a segmentation head on an encoder (`lima-zoo eval -m ENCODER --data ROOT --out RUN`, see "
        'docs/evaluation.md), then load RUN/model with LiMASegmenter.from_pretrained("RUN/model")'
        if unpublished and unpublished[0].task == "segmentation"
        else "pretrain an encoder (`lima-zoo train ... --out DIR`, see docs/training.md) or save one with "
        "`encoder.save_pretrained(DIR)`, then load it with LiMAEncoder.from_pretrained(DIR)"
    )
    return (
        f"cannot load {source.repo_id!r} (revision {source.revision or 'main'}): {why}.\n{note}"
        f"  Looked in the Hugging Face cache at {cache} (set HF_HOME or cache_dir= to use another).\n"
        f"  To make weights locally: {make}; or copy a downloaded model folder here and pass its path."
    )


def fetch_model_files(
    source: ModelSource,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    onnx: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    extra: tuple[str, ...] = (),
) -> dict[str, Path]:
    """Paths of config.json and model.safetensors (or model.onnx with ``onnx``) and the ``extra``
    files (a segmentation head's), downloaded into the cache when needed. token: a Hub token for
    private repos (None: huggingface_hub's login / HF_TOKEN); force_download: fetch again even when
    cached (a branch revision that moved)."""
    names = (ONNX_FILES if onnx else MODEL_FILES) + tuple(extra)
    if source.local_dir is not None:
        files = {name: source.local_dir / name for name in names}
        missing = [n for n, p in files.items() if not p.is_file()]
        if missing:
            how = "lima-zoo export DIR --format onnx" if onnx and ONNX_NAME in missing else "save_pretrained"
            if set(missing) <= set(extra) and not onnx:
                how = "lima-zoo eval ... --out RUN, which writes RUN/model"
            raise FileNotFoundError(f"{source.local_dir}: missing {', '.join(missing)} (write it with {how})")
        return files
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    def download(offline: bool) -> dict[str, Path]:
        return {
            name: Path(
                hf_hub_download(
                    source.repo_id,
                    name,
                    revision=source.revision,
                    cache_dir=cache_dir,
                    local_files_only=offline,
                    token=token,
                    force_download=force_download and not offline,
                )
            )
            for name in names
        }

    if not force_download:
        try:
            return download(offline=True)
        except LocalEntryNotFoundError:
            pass
    if local_files_only or constants.HF_HUB_OFFLINE:
        flag = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
        what = "a fresh download was asked for (force_download)" if force_download else "not in the local cache"
        raise OfflineError(_offline_message(source, cache_dir, f"{what} and {flag}"))
    if not hub_reachable():
        raise OfflineError(
            _offline_message(source, cache_dir, f"not in the local cache and {constants.ENDPOINT} is unreachable")
        )
    return download(offline=False)


def model_files(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    onnx: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    extra: tuple[str, ...] = (),
) -> tuple[dict[str, Path], str]:
    """Resolve ``name_or_path`` and fetch its files (those of ``fetch_model_files``): ({file name:
    local path}, the revision loaded)."""
    source = resolve_source(name_or_path, revision)
    files = fetch_model_files(
        source, cache_dir, local_files_only, onnx=onnx, token=token, force_download=force_download, extra=extra
    )
    return files, loaded_revision(files, source)
