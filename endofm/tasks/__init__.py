"""Fine-tuning and evaluation on the benchmarks: the shared loop, one module per benchmark, evaluation.

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, pretraining,
methods and the other tasks modules.
"""
