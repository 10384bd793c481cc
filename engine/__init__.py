"""medfake.engine: the library (data format, phantoms, models, sampling, training, metrics)."""
