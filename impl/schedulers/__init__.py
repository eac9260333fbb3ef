"""IPVS schedulers as the kernel implements them (ipvs-semantics §4)."""
