"""Run inside a guest as root: send a hand-made TCP SYN to 127.0.0.1:PORT out of the guest's
NIC (a normal socket cannot: the guest's kernel keeps 127/8 on its own loopback) and report
whether anything answered with SYN-ACK. Prints OPEN, CLOSED (RST) or NOANSWER.

Usage: python3 rawsyn.py IFACE GATEWAY_IP PORT
"""

import os
import random
import socket
import struct
import sys
import time


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def main() -> None:
    iface, gw, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dst = "127.0.0.1"
    src = os.popen(f"ip -4 -o addr show dev {iface}").read().split()[3].split("/")[0]
    # the gateway's MAC: make the kernel resolve it (a UDP "connect" + send), then read it
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", (gw, 9))
    time.sleep(0.5)
    neigh = os.popen(f"ip neigh show {gw} dev {iface}").read().split()
    gw_mac = bytes.fromhex(neigh[neigh.index("lladdr") + 1].replace(":", ""))
    with open(f"/sys/class/net/{iface}/address") as f:
        my_mac = bytes.fromhex(f.read().strip().replace(":", ""))
    sport = random.randint(20000, 60000)
    seq = random.getrandbits(32)
    tcp = struct.pack("!HHIIBBHHH", sport, port, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp),
        random.getrandbits(16),
        0,
        64,
        6,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((iface, 0))
    s.settimeout(0.2)
    s.send(gw_mac + my_mac + b"\x08\x00" + ip + tcp)
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            frame = s.recv(65535)
        except TimeoutError:
            continue
        pkt = frame[14:]
        if len(pkt) < 40 or pkt[9] != 6:
            continue
        ihl = (pkt[0] & 0xF) * 4
        sp, dp = struct.unpack("!HH", pkt[ihl : ihl + 4])
        if sp == port and dp == sport:
            flags = pkt[ihl + 13]
            print("OPEN" if flags & 0x12 == 0x12 else "CLOSED" if flags & 0x04 else "OTHER")
            return
    print("NOANSWER")


main()
