"""endofm: Endo-FM (video foundation model for endoscopy) reimplemented, with its workflow.

The package itself belongs to no layer and imports nothing; docs/architecture.md describes the layers
of its modules.
"""
