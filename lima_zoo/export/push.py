"""``lima-zoo push``: publish an encoder folder to the Hugging Face Hub in one commit.

What goes up: config.json, model.safetensors, model.onnx (when the folder has one) and a README.md
rendered from the model-card template. The folder is loaded strictly before anything is sent, so a
broken export never reaches the Hub. Everything is one ``create_commit``, so the repo never holds a
partial upload. The token comes from HF_TOKEN or ``hf auth login`` and is never printed.
Offline (HF_HUB_OFFLINE=1, or the endpoint unreachable) -> :class:`~lima_zoo.hub.OfflineError`
within seconds, before any repo is created.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..hub import CONFIG_NAME, ONNX_NAME, WEIGHTS_NAME, OfflineError, hub_reachable
from .card import render_card

__all__ = ["UploadPlan", "plan_upload", "push"]

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class UploadPlan:
    """Exactly what one push sends: (path in repo, local file) pairs and the rendered card."""

    repo_id: str
    files: list[tuple[str, Path]]
    card: str

    def describe(self) -> str:
        lines = [f"would upload to {self.repo_id} in one commit:"]
        for name, path in self.files:
            lines.append(f"  {name:<18} {path.stat().st_size:>12,} bytes  sha256 {_sha256(path)[:16]}")
        lines.append(f"  {'README.md':<18} {len(self.card.encode()):>12,} bytes  (rendered card below)")
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    """Hex digest, read in 1 MB blocks (model files are ~150 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan_upload(
    model_dir: str | Path, repo_id: str, card_data: str | Path | None = None, evals: list[Path] = ()
) -> UploadPlan:
    """Check the folder (strict load, ONNX inputs) and render the card; no network.

    Args:
        model_dir: an encoder folder (config.json, model.safetensors, model.onnx if exported), or a
            segmentation folder (with head.json and head.safetensors).
        repo_id: the Hub repo, ``org/name``.
        card_data: a card-data name under ``lima_zoo/model_cards/`` or a YAML file (default: by the
            folder's config).
        evals: metrics.json files from ``lima-zoo eval``: the card's results.
    """
    from ..encoder import LiMAEncoder

    model_dir = Path(model_dir)
    if not REPO_ID.match(repo_id):
        raise ValueError(f"--repo-id {repo_id!r}: expected 'org/name' (letters, digits, . _ -)")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model folder")
    segmentation = (model_dir / "head.json").is_file()
    if segmentation:  # a segmentation folder: the encoder and its head, both strictly
        from ..segmenter import HEAD_FILES, LiMASegmenter

        LiMASegmenter.from_pretrained(model_dir)
    else:
        LiMAEncoder.from_pretrained(model_dir)  # strict: missing/unexpected tensors are an error here
    files = [(CONFIG_NAME, model_dir / CONFIG_NAME), (WEIGHTS_NAME, model_dir / WEIGHTS_NAME)]
    files += [(name, model_dir / name) for name in HEAD_FILES] if segmentation else []
    if (model_dir / ONNX_NAME).is_file():
        from ..runtime import OnnxEncoder, OnnxSegmenter

        runner = OnnxSegmenter if segmentation else OnnxEncoder
        runner.from_files({name: model_dir / name for name in (CONFIG_NAME, ONNX_NAME, "head.json")})  # loads
        files.append((ONNX_NAME, model_dir / ONNX_NAME))
    return UploadPlan(repo_id, files, render_card(model_dir, repo_id, card_data, list(evals)))


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()  # HF_TOKEN, else the stored login
    if not token:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (the token is never printed)")
    return token


def push(plan: UploadPlan, private: bool = False, revision: str | None = None, message: str | None = None) -> str:
    """Create the repo if needed and upload the plan in one commit; returns the commit URL.

    Args:
        plan: what :func:`plan_upload` checked and rendered.
        private: create the repo as private.
        revision: the branch to commit to (created if needed; default main).
        message: the commit message.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise OfflineError(f"cannot push to {plan.repo_id}: HF_HUB_OFFLINE=1 is set; nothing was uploaded")
    if not hub_reachable():
        raise OfflineError(f"cannot push to {plan.repo_id}: {constants.ENDPOINT} is unreachable; nothing was uploaded")
    api = HfApi(token=_token())
    api.create_repo(plan.repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(plan.repo_id, branch=revision, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in plan.files]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=plan.card.encode()))
    info = api.create_commit(
        plan.repo_id, ops, commit_message=message or "Upload LiMA encoder with lima-zoo", revision=revision
    )
    return str(info.commit_url)
