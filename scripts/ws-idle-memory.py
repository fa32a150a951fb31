#!/usr/bin/env python3
"""Memory per idle authenticated WebSocket: opens N sockets (ingest's /v1/ingest/ws, or the
gateway's /v1/ws with WS_PATH=/v1/ws, each in its own room with SUBSCRIBE_ROOM=<tenant>) to a
running server and reports the growth of the server's resident memory divided by N.

More sockets than one client address has ports for (~28,000 toward one server port): spread
them over several loopback addresses with SOURCE_ADDRESSES=127.0.0.2,127.0.0.3,... and raise the
open-file limit first (`prlimit --nofile=250000 --pid $$`, for the server too).

usage: [WS_PATH=/v1/ws] [SOURCE_ADDRESSES=a,b,...] scripts/ws-idle-memory.py ADDR API_KEY_OR_TOKEN SERVER_PID [N]
e.g.   scripts/ws-idle-memory.py 127.0.0.1:8080 "$(cat .pitboss/demo-api-key)" "$(pgrep -f 'pitboss up')" 2000
(ingest holds at most 2,500 sockets of one tenant, `max_websockets_per_tenant`: more need a
config raising it, docs/benchmarks.md)
"""
import base64, os, resource, socket, sys, time

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")

def frame(text):
    """A masked client text frame (RFC 6455)."""
    data = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81, 0x80 | len(data)]) if len(data) < 126 else bytes([0x81, 0xFE]) + len(data).to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))

SOURCES = [a for a in os.environ.get("SOURCE_ADDRESSES", "").split(",") if a]

def connect(host, port, key, i=0):
    source = (SOURCES[i % len(SOURCES)], 0) if SOURCES else None
    s = socket.create_connection((host, port), timeout=10, source_address=source)
    nonce = base64.b64encode(os.urandom(16)).decode()
    path = os.environ.get("WS_PATH", "/v1/ingest/ws")
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
               f"Authorization: Bearer {key}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"handshake refused: {head.splitlines()[0]!r}")
    # Gateway sockets (WS_PATH=/v1/ws) with SUBSCRIBE_ROOM=<tenant>: each joins its own room
    # (`room:<tenant>:r-<i>`; the token needs --rooms '*').
    tenant = os.environ.get("SUBSCRIBE_ROOM")
    if tenant:
        s.sendall(frame(f'{{"type":"subscribe","channel":"room:{tenant}:r-{i}"}}'))
    return s

def main():
    addr, key, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    host, port = addr.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 100:
        raise SystemExit(f"{n} sockets need an open-file limit above {n + 100}; this process's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, hard))
    warm = [connect(host, int(port), key) for _ in range(50)]  # allocator and runtime warm-up
    time.sleep(1)
    before = rss_kb(pid)
    started = time.time()
    socks = []
    for i in range(n):
        socks.append(connect(host, int(port), key, i))
        if (i + 1) % 10000 == 0:
            print(f"{i + 1} connected ({time.time() - started:.0f} s)", file=sys.stderr)
    time.sleep(2)
    after = rss_kb(pid)
    per = (after - before) * 1024 / n
    print(f"{n} idle WebSockets: server RSS {before} kB -> {after} kB: {per:,.0f} bytes per socket")
    for s in socks + warm:
        s.close()

if __name__ == "__main__":
    main()
