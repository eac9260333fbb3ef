"""SIP persistence engine: the Call-ID extraction of ``ip_vs_pe_sip.c`` (docs/semantics.md §2.3).

``callid(payload)`` mirrors ``get_callid`` + ``ct_sip_get_header(SIP_HDR_CALL_ID)`` from
``nf_conntrack_sip.c`` (6.1.192) byte for byte, including its quirks: the first line (request or
status line) is never a header; a line starting with ``Call-Id`` or the compact ``i`` (followed
by a non-letter) that is not followed by ``:`` ends the search; the value is a "word", optionally
``word@word``; the value must be followed by CR or LF and be at most 255 bytes.
"""

from __future__ import annotations

IP_VS_PEDATA_MAXLEN = 255
_NAME = b"call-id"
_CNAME = b"i"


def _isalpha(c: int) -> bool:
    # lib/ctype.c: ASCII letters, and Latin-1 192-255 except 215 (x) and 247 (/).
    return 65 <= c <= 90 or 97 <= c <= 122 or (c >= 192 and c not in (215, 247))


def _isalnum(c: int) -> bool:
    return _isalpha(c) or 48 <= c <= 57


def _iswordc(c: int) -> bool:
    # iswordc() compares a (signed) char: bytes >= 128 only pass through isalnum().
    return _isalnum(c) or (
        c < 128 and (c in b"!\"%:<>?_`{}~'" or 40 <= c <= 43 or 91 <= c <= 93 or 45 <= c <= 47)
    )


def _word_len(data: bytes, pos: int) -> int:
    n = 0
    while pos + n < len(data) and _iswordc(data[pos + n]):
        n += 1
    return n


def _callid_len(data: bytes, pos: int) -> int:
    n = _word_len(data, pos)
    end = pos + n
    if not n or end == len(data) or data[end] != ord("@"):
        return n
    domain = _word_len(data, end + 1)
    return 0 if not domain else n + 1 + domain


def _follow_continuation(data: bytes, pos: int) -> int | None:
    limit = len(data)
    pos += 1
    if pos >= limit:
        return None
    if data[pos - 1] == 13 and data[pos] == 10:
        pos += 1
        if pos >= limit:
            return None
    if data[pos] not in (32, 9):
        return None
    while pos < limit and data[pos] in (32, 9):
        pos += 1
    return pos


def _skip_whitespace(data: bytes, pos: int) -> int | None:
    limit = len(data)
    p: int | None = pos
    while p is not None and p < limit:
        if data[p] in (32, 9):
            p += 1
            continue
        if data[p] in (13, 10):
            p = _follow_continuation(data, p)
        break
    return p if p is not None and p < limit else None


def _get_header(data: bytes, dataoff: int) -> tuple[int, int, int]:
    """``ct_sip_get_header``: (ret, matchoff, matchlen), ret 1 found, 0 none, -1 bad value."""
    limit = len(data)
    pos = dataoff
    while pos < limit:
        if data[pos] not in (13, 10):
            pos += 1
            continue
        pos += 1
        if pos >= limit:
            break
        if data[pos - 1] == 13 and data[pos] == 10:
            pos += 1
            if pos >= limit:
                break
        if data[pos] in (32, 9):  # continuation line
            pos += 1
            continue
        if limit - pos >= len(_NAME) and data[pos : pos + len(_NAME)].lower() == _NAME:
            pos += len(_NAME)
        elif (
            limit - pos >= len(_CNAME) + 1
            and data[pos : pos + 1].lower() == _CNAME
            and not _isalpha(data[pos + 1])
        ):
            pos += len(_CNAME)
        else:
            pos += 1
            continue
        p = _skip_whitespace(data, pos)
        if p is None or data[p] != ord(":"):
            break
        p += 1
        if p >= limit:
            break
        p = _skip_whitespace(data, p)
        if p is None:
            break
        matchlen = _callid_len(data, p)
        if not matchlen:
            return -1, p, 0
        return 1, p, matchlen
    return 0, 0, 0


def callid(payload: bytes) -> bytes | None:
    """The Call-ID the kernel's SIP pe extracts from a UDP payload, or None (packet dropped)."""
    if not payload:  # dataoff >= skb->len: no UDP payload at all
        return None
    dataoff = 0
    while True:
        ret, matchoff, matchlen = _get_header(payload, dataoff)
        if ret > 0:
            break
        if ret == 0:
            return None
        dataoff += matchoff  # the kernel adds the absolute offset (sic)
    if matchlen > IP_VS_PEDATA_MAXLEN:
        return None
    end = matchoff + matchlen
    if end == len(payload) or payload[end] not in (13, 10):
        return None
    return payload[matchoff:end]
