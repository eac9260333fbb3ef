#!/bin/sh
# nftdr: a tiny persistent direct-routing balancer made of one nftables table (netdev ingress).
#
# An example of lvsconf's black-box contract (README "Implementations under test"): lvsconf runs
# it inside the director namespace as
#   nftdr.sh apply       the scenario's ipvsadm-save text on stdin; (re)writes the nft table
#   nftdr.sh templates   prints its persistence entries in /proc/net/ip_vs_conn format
#   nftdr.sh ready       exit 0 when nft works here
# with the topology in LVSCONF_* variables (LVSCONF_CLIENT_IF, LVSCONF_SEGMENT_IF, LVSCONF_SCRATCH).
#
# How it balances, per service (ingress hook on the client link, before the IP stack):
#   1. a packet of a known connection (saddr . sport in c_<svc>_<rs>) goes to that real server;
#   2. a TCP packet that is not a SYN goes on to the director's own stack (like IPVS: only a
#      SYN schedules);
#   3. a client with a persistence entry (saddr in p_<svc>_<rs>) goes to that real server;
#   4. otherwise numgen picks a real server of weight > 0 (rr; wrr by weight ranges);
#   5. no real server left: ICMP port unreachable.
# Going to a real server = remember the connection (and the client, when persistent) with a
# timeout, then `fwd ip to RIP device BRIDGE`: the frame leaves for the real server's MAC with
# the VIP as destination (direct routing). Sets survive re-applies, so persistence survives
# edits; a real server's chain only exists while it is configured.
#
# What it cannot do is declared in manifest.toml (unsupported): lvsconf grades those cases
# `unsupported` instead of running them.
set -eu

TABLE="netdev nftdr"

die() { echo "nftdr: $*" >&2; exit 1; }

# the rules on stdin -> one line per service/dest: "S <sid> <proto> <fam> <vip> <port> <sched> <persist>"
# and "D <sid> <bid> <fam> <rip> <port> <weight>"; anything this balancer cannot do is an error
parse() {
    awk '
    function fail(msg) { print "nftdr: line " NR ": " msg > "/dev/stderr"; bad = 1; exit 1 }
    function ep(text,   host, port) {
        if (substr(text, 1, 1) == "[") {
            host = substr(text, 2, index(text, "]") - 2); port = substr(text, index(text, "]") + 2)
        } else { host = text; sub(/:[0-9]+$/, "", host); port = text; sub(/^.*:/, "", port) }
        EP_HOST = host; EP_PORT = port
    }
    function ident(s) { gsub(/[^0-9A-Za-z]/, "_", s); return s }
    /^#/ || NF == 0 { next }
    {
        op = $1; proto = ""; sched = "wlc"; persist = 0; weight = 1; fwd = "g"; rs = ""
        for (i = 2; i <= NF; i++) {
            if ($i == "-t") { proto = "tcp"; svc = $(++i) }
            else if ($i == "-u") { proto = "udp"; svc = $(++i) }
            else if ($i == "-s") sched = $(++i)
            else if ($i == "-p") persist = $(++i)
            else if ($i == "-r") rs = $(++i)
            else if ($i == "-w") weight = $(++i)
            else if ($i == "-g") fwd = "g"
            else fail("option " $i " is not supported (declare it in manifest.toml)")
        }
        if (proto == "") fail("only TCP and UDP services (-t, -u)")
        ep(svc); vip = EP_HOST; port = EP_PORT
        fam = (index(vip, ":") ? "ip6" : "ip")
        sid = proto "_" ident(vip) "_" port
        if (op == "-A") {
            if (sched != "rr" && sched != "wrr") fail("scheduler " sched " (only rr, wrr)")
            print "S", sid, proto, fam, vip, port, sched, persist
        } else if (op == "-a") {
            ep(rs)
            print "D", sid, ident(EP_HOST) "_" EP_PORT, fam, EP_HOST, EP_PORT, weight
        } else fail("operation " op " (only -A and -a)")
    }'
}

# the index -> an nft script replacing every chain, keeping the sets (their entries persist)
render() {
    awk -v client_if="$LVSCONF_CLIENT_IF" -v segment_if="$LVSCONF_SEGMENT_IF" -v table="$TABLE" '
    function add(line) { print line }
    $1 == "S" { n++; sid[n] = $2; proto[$2] = $3; fam[$2] = $4; vip[$2] = $5; port[$2] = $6
                sched[$2] = $7; persist[$2] = $8; nb[$2] = 0 }
    $1 == "D" { s = $2; k = ++nb[s]; bid[s, k] = $3; rip[s, k] = $5; weight[s, k] = $7 }
    END {
        add("add table " table)
        add("add chain " table " ingress { type filter hook ingress device \"" client_if "\" priority 0; policy accept; }")
        add("flush chain " table " ingress")
        for (i = 1; i <= n; i++) {
            s = sid[i]; f = fam[s]; p = proto[s]; addr = (f == "ip" ? "ipv4_addr" : "ipv6_addr")
            ctimeout = (p == "tcp" ? "900s" : "300s")
            key = f " saddr . " p " sport"
            add("add chain " table " s_" s)
            add("flush chain " table " s_" s)
            add("add rule " table " ingress " f " daddr " vip[s] " " p " dport " port[s] " jump s_" s)
            for (k = 1; k <= nb[s]; k++) {
                b = s "_" bid[s, k]
                add("add set " table " c_" b " { type " addr " . inet_service; flags dynamic,timeout; timeout " ctimeout "; }")
                if (persist[s] > 0)
                    add("add set " table " p_" b " { type " addr "; flags dynamic,timeout; timeout " persist[s] "s; }")
                add("add chain " table " b_" b)
                add("flush chain " table " b_" b)
                add("add rule " table " b_" b " update @c_" b " { " key " }")
                if (persist[s] > 0) add("add rule " table " b_" b " update @p_" b " { " f " saddr }")
                add("add rule " table " b_" b " fwd " f " to " rip[s, k] " device \"" segment_if "\"")
                # 1. known connections
                add("add rule " table " s_" s " " key " @c_" b " update @c_" b " { " key " } fwd " f " to " rip[s, k] " device \"" segment_if "\"")
            }
            # 2. never schedule FTP data (source port 20: ip_vs_schedule "Not scheduling FTPDATA")
            add("add rule " table " s_" s " " p " sport 20 accept")
            # 2. only a SYN opens a TCP connection
            if (p == "tcp") add("add rule " table " s_" s " tcp flags & (fin | syn | rst | ack) != syn accept")
            # 3. persistence (weight 0 keeps its clients: quiescent)
            if (persist[s] > 0)
                for (k = 1; k <= nb[s]; k++) add("add rule " table " s_" s " " f " saddr @p_" s "_" bid[s, k] " jump b_" s "_" bid[s, k])
            # 4. scheduling over weight > 0
            total = 0; map = ""
            # IPVS keeps dests newest first and rr walks that list: walk them in that order
            for (k = nb[s]; k >= 1; k--) {
                w = (sched[s] == "wrr" ? weight[s, k] : (weight[s, k] > 0 ? 1 : 0))
                if (w <= 0) continue
                range = (w == 1 ? total : total "-" (total + w - 1))
                map = map (map == "" ? "" : ", ") range " : jump b_" s "_" bid[s, k]
                total += w
            }
            if (total > 0) add("add rule " table " s_" s " numgen inc mod " total " vmap { " map " }")
            # 5. nobody to schedule: what IPVS answers (ip_vs_leave)
            add("add rule " table " s_" s " reject with icmpx type port-unreachable")
        }
    }'
}

apply() {
    : "${LVSCONF_SCRATCH:?}" "${LVSCONF_CLIENT_IF:?}" "${LVSCONF_SEGMENT_IF:?}"
    parse > "$LVSCONF_SCRATCH/nftdr.index.new"
    render < "$LVSCONF_SCRATCH/nftdr.index.new" > "$LVSCONF_SCRATCH/nftdr.nft"
    nft -f "$LVSCONF_SCRATCH/nftdr.nft" 2> "$LVSCONF_SCRATCH/nft.err" ||
        die "nft refused $LVSCONF_SCRATCH/nftdr.nft: $(grep -m1 -i error "$LVSCONF_SCRATCH/nft.err")"
    mv "$LVSCONF_SCRATCH/nftdr.index.new" "$LVSCONF_SCRATCH/nftdr.index"
}

# 4m58s120ms -> 298 (whole seconds, rounded down like /proc)
seconds() {
    echo "$1" | awk '{ t = 0; s = $0
        while (match(s, /^[0-9]+(ms|d|h|m|s)/)) {
            tok = substr(s, 1, RLENGTH); s = substr(s, RLENGTH + 1)
            n = tok + 0; u = tok; sub(/^[0-9]+/, "", u)
            if (u == "d") t += n * 86400; else if (u == "h") t += n * 3600
            else if (u == "m") t += n * 60; else if (u == "s") t += n
        }
        print t }'
}

hexaddr() {
    case "$1" in
    *:*) echo "$1" ;;
    *) echo "$1" | awk -F. '{ printf "%02X%02X%02X%02X\n", $1, $2, $3, $4 }' ;;
    esac
}

templates() {
    : "${LVSCONF_SCRATCH:?}"
    echo "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData"
    [ -f "$LVSCONF_SCRATCH/nftdr.index" ] || return 0
    awk '$1 == "S" && $8 > 0 { print $2, $3, $5, $6 }' "$LVSCONF_SCRATCH/nftdr.index" |
    while read -r sid proto vip port; do
        awk -v s="$sid" '$1 == "D" && $2 == s { print $3, $5, $6 }' "$LVSCONF_SCRATCH/nftdr.index" |
        while read -r bid rip rport; do
            nft list set $TABLE "p_${sid}_${bid}" 2>/dev/null |
                tr -d '\n\t' | sed -n 's/.*elements = {\([^}]*\)}.*/\1/p' |
                awk -F, '{ for (i = 1; i <= NF; i++) print $i }' |
            while read -r caddr rest; do
                [ -n "$caddr" ] || continue
                left=$(echo "$rest" | awk '{ for (i = 1; i < NF; i++) if ($i == "expires") print $(i + 1) }')
                printf '%-3s %s 0000 %s %04X %s %04X NONE        %7d\n' \
                    "$(echo "$proto" | tr a-z A-Z)" "$(hexaddr "$caddr")" "$(hexaddr "$vip")" \
                    "$port" "$(hexaddr "$rip")" "$rport" "$(seconds "$left")"
            done
        done
    done
}

case "${1:-}" in
apply) apply ;;
templates) templates ;;
ready) nft list tables >/dev/null ;;
*) die "usage: nftdr.sh apply|templates|ready" ;;
esac
