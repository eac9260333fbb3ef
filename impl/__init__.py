"""lvsconf reference implementation: a pure, deterministic model of IPVS.

No I/O and no clock of its own (time is injected), except in the datapath shell (impl.datapath).
"""
