"""Serving beside the Space: the REST API, its RQ job workers, and file / Dask batch prediction.

Every entry point scores with the Space's own predictor (`deployment/`) and reads rows with its one
input rule, so what is measured by `evaluate` is what is served here."""
