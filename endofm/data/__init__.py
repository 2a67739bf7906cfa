"""The data stage: pretraining sources, video decoding, clips, benchmark indexes, the synthetic corpus.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""
