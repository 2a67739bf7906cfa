"""Self-supervised pretraining: multi-view DINO-style objective, EMA teacher and optimisation helpers."""
