"""The reference director's datapath: forwards real packets with the reference model.

Packets for the VIPs reach a process in the director namespace through a TUN device
(:mod:`.plumbing` steers them there with policy routing); :mod:`.engine` asks the model
(``impl.director.Director``) what to do and :mod:`.forward` does it like IPVS (DR, NAT, TUN,
ICMP unreachable, or back to the local stack). :mod:`.control` answers the harness (templates,
dest changes); :mod:`.process` is the process itself, :mod:`.packet` and :mod:`.checksum` the
byte work. The harness side is :mod:`harness.implementations.reference`.
"""
