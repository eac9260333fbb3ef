"""lvsconf reference implementation: a pure, deterministic model of IPVS (no I/O, clock injected)."""
