"""``python -m mamba_bench`` (what ``torchrun -m mamba_bench`` runs): the same CLI as ``mamba-bench``."""

from mamba_bench.cli import main

if __name__ == "__main__":
    main()
