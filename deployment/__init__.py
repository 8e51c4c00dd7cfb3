"""The Hugging Face Space: app.py + predictor.py + the model bundle in model/."""
