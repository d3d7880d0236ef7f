#!/usr/bin/env python3
"""Signup flood against a Courier server: N parallel POST /api/signup while one Phoenix socket
sends a heartbeat every 100 ms; prints the server's peak RSS (VmHWM) and heartbeat round trips."""
import base64, json, os, socket, struct, subprocess, sys, tempfile, threading, time, urllib.request

binary, n, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""
port = 4700 + os.getpid() % 200
tmp = tempfile.mkdtemp()
cfg = os.path.join(tmp, "c.toml")
open(cfg, "w").write(f'bind = "127.0.0.1:{port}"\ndatabase_url = "{tmp}/f.db"\n[accounts]\n{extra}\n')
server = subprocess.Popen([binary, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def hwm():
    for line in open(f"/proc/{server.pid}/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            yield line.split()[1]
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError:
        time.sleep(0.1)
ws = socket.create_connection(("127.0.0.1", port))
key = base64.b64encode(os.urandom(16)).decode()
ws.sendall(f"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += ws.recv(4096)
buf = buf.split(b"\r\n\r\n", 1)[1]
def send(text):
    data = text.encode(); mask = os.urandom(4)
    hdr = bytes([0x81, 0x80 | len(data)]) + mask
    ws.sendall(hdr + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
def recv():
    global buf
    while True:
        if len(buf) >= 2:
            ln = buf[1] & 0x7F; off = 2
            if ln == 126: ln = struct.unpack(">H", buf[2:4])[0]; off = 4
            if len(buf) >= off + ln:
                frame, buf = buf[off:off+ln], buf[off+ln:]
                return frame
        buf += ws.recv(65536)
base_rss = list(hwm())
statuses, lock = {}, threading.Lock()
def one(i):
    body = json.dumps({"username": f"flood{i}", "password": "flood password"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/signup", body, {"Content-Type": "application/json"})
    try:
        code = urllib.request.urlopen(req, timeout=600).status
    except urllib.error.HTTPError as e:
        code = e.code
    except Exception as e:
        code = type(e).__name__
    with lock:
        statuses[code] = statuses.get(code, 0) + 1
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
t0 = time.time()
for t in threads: t.start()
rtts, ref = [], 0
while any(t.is_alive() for t in threads):
    ref += 1; s = time.time()
    send(json.dumps([None, str(ref), "phoenix", "heartbeat", {}]))
    recv(); rtts.append((time.time() - s) * 1000)
    time.sleep(0.1)
for t in threads: t.join()
elapsed = time.time() - t0
peak = list(hwm())
server.terminate(); server.wait()
rtts.sort()
pct = lambda p: rtts[min(len(rtts) - 1, int(len(rtts) * p))] if rtts else float("nan")
print(json.dumps({"binary": binary, "signups": n, "config": extra, "statuses": statuses,
                  "flood_s": round(elapsed, 1), "rss_before_kb": base_rss, "peak_hwm_kb": peak[0],
                  "heartbeats": len(rtts), "hb_p50_ms": round(pct(0.5), 1), "hb_p99_ms": round(pct(0.99), 1),
                  "hb_max_ms": round(rtts[-1], 1) if rtts else None}))
