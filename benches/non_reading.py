#!/usr/bin/env python3
"""Clients that never read, against a Courier server on the default config; prints the server's
peak RSS (VmHWM) and how the server ended each socket.

  A: one anonymous socket pushes 1 MB room `ping`s (each is answered with its own payload);
  B: ten anonymous sockets push 60 KB `ping`s;
  C: a user with 500 stored ~48 KB messages sends twenty `pull`s of the largest page.

Bounded: at most 2,000 pings per socket or 60 s; only 127.0.0.1. Usage:
  python3 benches/non_reading.py <courier binary> A|B|C
"""
import base64, json, os, socket, struct, subprocess, sys, tempfile, threading, time, urllib.request

binary, case = sys.argv[1], sys.argv[2]
port = 4900 + os.getpid() % 200
tmp = tempfile.mkdtemp()
cfg = os.path.join(tmp, "c.toml")
# Cheap hashing for the two signups of case C; everything else is the default config.
open(cfg, "w").write(f'bind = "127.0.0.1:{port}"\ndatabase_url = "{tmp}/n.db"\n'
                     '[accounts]\nargon2_memory_kib = 64\nargon2_iterations = 1\n')
server = subprocess.Popen([binary, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def hwm():
    fields = {}
    for line in open(f"/proc/{server.pid}/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            fields[line.split(":")[0]] = int(line.split()[1])
    return fields


for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        break
    except OSError:
        time.sleep(0.1)


class Ws:
    """A raw WebSocket client: masked text frames out, frames in only when asked."""

    def __init__(self, query):
        self.s = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(f"GET /socket/websocket?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def send(self, value):
        data = json.dumps(value).encode()
        mask = os.urandom(4)
        n = len(data)
        hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + struct.pack(">H", n)
                               if n < 65536 else bytes([0xFF]) + struct.pack(">Q", n))
        # One big-integer XOR masks a megabyte far faster than a Python loop over its bytes.
        masked = (int.from_bytes(data, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.s.sendall(hdr + mask + masked)

    def recv(self):
        while True:
            if len(self.buf) >= 2:
                ln, off = self.buf[1] & 0x7F, 2
                if ln == 126:
                    ln, off = struct.unpack(">H", self.buf[2:4])[0], 4
                elif ln == 127:
                    ln, off = struct.unpack(">Q", self.buf[2:10])[0], 10
                if len(self.buf) >= off + ln:
                    opcode = self.buf[0] & 0x0F
                    frame, self.buf = self.buf[off:off + ln], self.buf[off + ln:]
                    return opcode, frame
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def reply(self):
        while True:
            opcode, frame = self.recv()
            if opcode == 1:
                msg = json.loads(frame)
                if msg[3] == "phx_reply":
                    return msg


def close_seen(ws):
    """After the flood: read what is left and report the close frame, if one came."""
    ws.s.settimeout(10)
    try:
        while True:
            opcode, frame = ws.recv()
            if opcode == 8:
                code = struct.unpack(">H", frame[:2])[0] if len(frame) >= 2 else None
                return f"closed {code} {frame[2:].decode(errors='replace')}"
    except EOFError:
        return "connection ended without a close frame"
    except (socket.timeout, OSError) as e:
        return f"still open or reset ({type(e).__name__})"


def flood(ws, topic, event, payload, limit, deadline):
    sent = 0
    ws.s.settimeout(5)
    try:
        while sent < limit and time.time() < deadline:
            sent += 1
            ws.send(["1", str(sent + 1), topic, event, payload])
    except (socket.timeout, OSError):
        pass
    return sent


def signup(name):
    body = json.dumps({"username": name, "password": "non reading password"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/signup", body, {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))["session"]


baseline = hwm()
results = []
deadline = time.time() + 60
if case in ("A", "B"):
    count, size = (1, 1_000_000) if case == "A" else (10, 60_000)
    sockets = []
    for _ in range(count):
        ws = Ws("vsn=2.0.0")
        ws.send(["1", "1", "room:x", "phx_join", {"presence": False}])
        ws.reply()
        sockets.append(ws)
    sent = [0] * count

    def run(i):
        sent[i] = flood(sockets[i], "room:x", "ping", {"data": "x" * size}, 2000, deadline)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads: t.start()
    for t in threads: t.join()
    peak = hwm()
    results = [f"sent {sent[i]}: {close_seen(ws)}" for i, ws in enumerate(sockets)]
else:
    alice, bob = signup("alice"), signup("bob")
    sender = Ws(f"vsn=2.0.0&token={bob}&device=laptop")
    sender.send(["1", "1", "user:bob", "phx_join", {}])
    sender.reply()
    text = "m" * 48_000
    payload = base64.b64encode(json.dumps({"type": "text", "body": text}).encode()).decode()
    for i in range(500):
        sender.send(["1", str(i + 2), "user:bob", "message", {"id": f"m{i}", "to": {"eid": "alice"}, "payload": payload}])
        reply = sender.reply()
        assert reply[4]["status"] == "ok", reply
    reader = Ws(f"vsn=2.0.0&token={alice}&device=phone")
    reader.send(["1", "1", "user:alice", "phx_join", {"mode": "pull"}])
    reader.reply()
    baseline = hwm()
    sent = flood(reader, "user:alice", "pull", {"after": 0, "limit": 500}, int(os.environ.get("PULLS", "20")), deadline)
    time.sleep(5)  # the pulls are read from the database and queued meanwhile
    peak = hwm()
    results = [f"sent {sent} pulls: {close_seen(reader)}"]
server.terminate()
server.wait()
print(json.dumps({"binary": binary, "case": case, "baseline_kb": baseline, "peak_kb": peak, "sockets": results}))
