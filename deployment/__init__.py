"""The Hugging Face Space: app.py + predictor.py + inputs.py and the model bundles in models/.

Self-contained: it imports nothing else of the repo (the Space runs these files side by side), and
every other stage scores with its predictor, so what is measured is what is served."""
