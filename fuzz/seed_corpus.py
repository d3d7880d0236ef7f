import os, json, struct, base64
root = "corpus"
def put(target, name, data):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    open(os.path.join(d, "seed-" + name), "wb").write(data)

v1 = {
 "join": '{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1"}',
 "heartbeat": '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2"}',
 "push": '{"topic":"room:lobby","event":"new_msg","payload":{"body":"hi \\"there\\""},"ref":"3","join_ref":"1"}',
 "leave": '{"topic":"room:lobby","event":"phx_leave","payload":{},"ref":null}',
 "user_join": '{"topic":"user:alice","event":"phx_join","payload":{"after":40,"mode":"push","encoding":"json"},"ref":"4"}',
}
for k, v in v1.items(): put("phoenix_v1_json", k, v)
v2 = {
 "join": '["5","5","room:lobby","phx_join",{"presence":false}]',
 "heartbeat": '[null,"8","phoenix","heartbeat",{}]',
 "push": '["5","6","room:lobby","new_msg",{"body":"h\\u00e9llo"}]',
 "extra": '[null,"8","phoenix","heartbeat",{},"extra"]',
 "pull": '["3","9","user:alice","pull",{"after":41,"limit":100}]',
 "message": '["3","10","user:alice","message",{"id":"m1","to":{"eid":"bob"},"payload":"aGk=","timestamp":"5"}]',
 "signal": '["3","11","user:alice","signal",{"to":{"eid":"bob"},"status":4}]',
 "receipt": '["3","12","user:alice","receipt",{"up_to":42,"state":"read"}]',
}
for k, v in v2.items(): put("phoenix_v2_json", k, v)
def push(jr, r, topic, event, body):
    f = [jr, r, topic, event]
    return bytes([0] + [len(x) for x in f]) + b"".join(x.encode() for x in f) + body
put("phoenix_v2_binary", "ping", push("12", "13", "room:bin", "ping", bytes([1, 2, 255])))
put("phoenix_v2_binary", "null_join_ref", push("null", "1", "room:bin", "ping", b""))
# A protobuf Message: id=1 "m1", to=5 {eid=1 "bob"}, timestamp=7 5, payload=8 "hi"
def ld(field, b): return bytes([field << 3 | 2, len(b)]) + b
def vi(field, n):
    out = bytes([field << 3]); 
    while True:
        b = n & 0x7f; n >>= 7
        if n: out += bytes([b | 0x80])
        else: return out + bytes([b])
msg_pb = ld(1, b"m1") + ld(5, ld(1, b"bob")) + vi(7, 5) + ld(8, b"hi")
put("phoenix_v2_binary", "message", push("3", "10", "user:alice", "message", msg_pb))
put("message_protobuf", "plain", msg_pb)
put("message_protobuf", "encrypted", ld(1, b"m2") + ld(5, ld(1, b"bob") + ld(2, b"phone")) + ld(9, b"x25519") + ld(10, b"Y2lwaGVy") + ld(11, b"sig") + vi(12, 3) + vi(13, 1) + ld(14, vi(1,1)+vi(2,1)))
put("message_json", "plain", '{"id":"m1","to":{"eid":"bob"},"payload":"aGk="}')
put("message_json", "full", json.dumps({"id":"m1","signal_offset":9,"user_offset":7,"from":{"eid":"alice","connection_resource_id":"phone"},"to":{"eid":"bob"},"timestamp":"1700000000000","payload":"eyJib2R5IjoiaGkifQ==","encryption_type":"","encrypted":"","signature":"","signal_type":3,"signal_offset_state":True,"signal_ack_state":{"send":True,"received":False,"read":False},"signal_request":2}))
put("message_json", "encrypted", '{"id":"m2","to":{"eid":"bob"},"encrypted":"Y2lwaGVy","encryption_type":"x25519","timestamp":6}')
put("signal_json", "typing", '{"to":{"eid":"bob"},"status":4}')
put("signal_json", "full", '{"id":"s1","to":{"eid":"bob"},"from":{"eid":"alice","connection_resource_id":"phone"},"status":5,"timestamp":"1700000000000","type":2,"signal_type":1,"error":null,"signal_offset_state":false,"signal_offset":0,"user_offset":0}')
sig_pb = ld(1, b"s1") + vi(4, 4) + ld(7, ld(1, b"bob")) + vi(5, 1700000000000) + vi(8, 1) + vi(9, 1) + ld(10, b"rate limited") + vi(11, 1)
put("signal_protobuf", "typing", sig_pb)
put("signal_protobuf", "minimal", vi(4, 5))
frames = [
 '{"type":"identification","version":"1.0.0","client":"fuzz"}',
 '{"type":"protocol.standard","standards":"ciphers,hashes"}',
 '{"type":"signup","username":"alice","password":"secretpassword","hash":"argon2id","cipher":"aes256-gcm"}',
 '{"type":"signin","username":"alice","password":"secretpassword"}',
 '{"type":"subscribe","session":"bogus"}',
]
put("seed002_json", "flow", "\n".join(frames))
put("seed002_json", "identify", frames[0])
put("seed002_json", "invite", frames[0] + "\n" + '{"type":"invite.request","session":"x","source":"alice","dest":"bob"}')
put("seed002_json", "message", frames[0] + "\n" + '{"type":"message","session":"x","source":"alice","dest":"bob","nonce":"n","message":"m"}')
put("seed002_json", "unknown", '{"type":"nope"}\n[1,2]\nnot json')
# WebSocket client frames: masked.
def frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126: hdr = bytes([b0, 0x80 | n])
    elif n < 65536: hdr = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else: hdr = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return hdr + mask + bytes(p ^ mask[i % 4] for i, p in enumerate(payload))
# prefix: chunk size, limit index (5 -> 200 bytes, 7 -> 65536)
put("ws_frames", "text", bytes([7, 7]) + frame(1, v2["join"].encode()) + frame(2, push("1","2","room:bin","ping",b"\x00")))
put("ws_frames", "fragmented", bytes([3, 7]) + frame(1, b"[null,", fin=False) + frame(9, b"ping") + frame(0, b'"1","phoenix",', fin=False) + frame(0, b'"heartbeat",{}]'))
put("ws_frames", "extended", bytes([200, 7]) + frame(2, bytes(300)) + frame(10, b"") + frame(8, struct.pack(">H", 1000) + b"bye"))
put("ws_frames", "over_limit", bytes([5, 5]) + frame(2, bytes(300)))
put("ws_frames", "unmasked", bytes([9, 7]) + bytes([0x81, 2]) + b"hi")
