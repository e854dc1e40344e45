"""status.py - the bridge's status API (metrics.listen on a unix socket) from a test."""
import re
import socket


def http_unix(path, url):
    """GET url from the status API on unix socket path; returns (status, body)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(("GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" % url).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def metric(path, name, **labels):
    """The value of one sample of /metrics (labels as keyword arguments), or None."""
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    text = http_unix(path, "/metrics")[1]
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{([^}]*)\})? (\S+)$", line)
        if m and m.group(1) == name and (m.group(3) or "") == want:
            return float(m.group(4))
    return None
