"""Self-supervised pretraining: multi-view DINO-style objective, EMA teacher and optimisation helpers.

Layer: pretraining (docs/architecture.md). May import: foundation, data, models, engine, metrics and the other pretraining modules.
"""
