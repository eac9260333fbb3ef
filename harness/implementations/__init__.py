"""Implementations under test (kernel IPVS, the reference datapath) and the --impl registry."""
