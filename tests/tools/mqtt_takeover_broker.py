#!/usr/bin/python3
"""mqtt_takeover_broker.py - a scripted MQTT 5 broker that says "session taken over".

Just enough of MQTT 5 for a publishing bridge: CONNECT -> CONNACK, PUBLISH QoS 1
-> PUBACK, QoS 2 -> PUBREC / PUBREL -> PUBCOMP, SUBSCRIBE -> SUBACK (granted QoS
1), PINGREQ -> PINGRESP, DISCONNECT. Messages are not routed anywhere. When a
client connects with the client id of a connected one, the old connection gets
DISCONNECT with reason code 0x8E (Session taken over) and is closed, as MQTT 5
section 3.1.4 requires (some brokers, mosquitto before 2.0.15 among them, only
close it). Each takeover is logged to stdout as "takeover <client id>".

Usage: mqtt_takeover_broker.py --port PORT
"""
import argparse
import select
import socket
import sys


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf, i):
    mult, value = 1, 0
    while True:
        if i >= len(buf):
            return None, i
        b = buf[i]
        i += 1
        value += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return value, i


def packet(kind, body):
    return bytes([kind]) + varint(len(body)) + body


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.client_id = None


def handle(conns, c, first, body, log):
    kind = first >> 4
    if kind == 1:  # CONNECT
        i = 2 + int.from_bytes(body[0:2], "big")  # protocol name
        i += 1 + 1 + 2  # level, flags, keepalive
        plen, i = read_varint(body, i)
        i += plen
        n = int.from_bytes(body[i:i + 2], "big")
        cid = body[i + 2:i + 2 + n].decode()
        for other in list(conns.values()):
            if other is not c and other.client_id == cid:
                log("takeover %s" % cid)
                try:
                    other.sock.sendall(packet(0xE0, bytes([0x8E, 0])))
                except OSError:
                    pass
                drop(conns, other)
        c.client_id = cid
        c.sock.sendall(packet(0x20, bytes([0, 0, 0])))
    elif kind == 3:  # PUBLISH
        qos = (first >> 1) & 3
        n = int.from_bytes(body[0:2], "big")
        if qos:
            mid = body[2 + n:4 + n]
            c.sock.sendall(packet(0x40 if qos == 1 else 0x50, mid))
    elif kind == 6:  # PUBREL
        c.sock.sendall(packet(0x70, body[0:2]))
    elif kind == 8:  # SUBSCRIBE
        mid = body[0:2]
        plen, i = read_varint(body, 2)
        i += plen
        granted = bytearray()
        while i < len(body):
            n = int.from_bytes(body[i:i + 2], "big")
            i += 2 + n + 1
            granted.append(1)
        c.sock.sendall(packet(0x90, mid + b"\x00" + bytes(granted)))
    elif kind == 12:  # PINGREQ
        c.sock.sendall(packet(0xD0, b""))
    elif kind == 14:  # DISCONNECT
        drop(conns, c)


def drop(conns, c):
    conns.pop(c.sock.fileno(), None)
    try:
        c.sock.close()
    except OSError:
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()

    def log(line):
        print(line)
        sys.stdout.flush()

    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(16)
    conns = {}
    while True:
        ready, _, _ = select.select([lsock] + [c.sock for c in conns.values()], [], [])
        for s in ready:
            if s is lsock:
                ns, _ = lsock.accept()
                conns[ns.fileno()] = Conn(ns)
                continue
            c = conns.get(s.fileno())
            if c is None:
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                drop(conns, c)
                continue
            c.buf += data
            while c.sock.fileno() in conns and len(c.buf) >= 2:
                n, i = read_varint(c.buf, 1)
                if n is None or len(c.buf) < i + n:
                    break
                first, body = c.buf[0], c.buf[i:i + n]
                c.buf = c.buf[i + n:]
                try:
                    handle(conns, c, first, body, log)
                except OSError:
                    drop(conns, c)


if __name__ == "__main__":
    main()
