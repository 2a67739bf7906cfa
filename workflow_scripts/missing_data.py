"""Snakemake adapter: the stand-in job for a raw folder or weights file that is not there. It says where to
get it (to the log and the terminal) and fails, so that only the jobs that need it fail."""

import sys
from pathlib import Path

smk = snakemake  # noqa: F821 (snakemake is injected)
log = Path(smk.log[0])
log.parent.mkdir(parents=True, exist_ok=True)
log.write_text(f"{smk.params.text}\n")
print(smk.params.text, file=sys.stderr)
sys.exit(1)
