"""IPVS schedulers as the kernel implements them (docs/semantics.md §4)."""
