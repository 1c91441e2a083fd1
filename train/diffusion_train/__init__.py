"""The default model's trainer: data (data.py), model (model.py), recipes (recipes.py), the
training loop (train.py), export to the engine's folder (export.py), dev-set scoring
(evaluate.py) and the engine's parity fixtures (fixtures.py)."""
