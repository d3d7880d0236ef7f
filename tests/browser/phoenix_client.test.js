// The page's Phoenix client (priv/static/js/phoenix_client.js) on its own, in Node, over a fake
// WebSocket: the frames it writes, replies by ref, timeouts, the heartbeat, reconnects and
// rejoins, and the inbox rules. What no real server can be made to do on cue (a duplicate
// message, a stale join_ref, a lost heartbeat) is tested here; chat.test.js has the real thing.
import assert from "node:assert/strict";
import { after, beforeEach, describe, test } from "node:test";

class FakeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  static all = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = FakeWebSocket.CONNECTING;
    this.sent = [];
    FakeWebSocket.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.readyState = FakeWebSocket.CLOSED;
    this.closedWith = { code, reason };
    queueMicrotask(() => this.onclose?.({ code, reason, wasClean: true }));
  }
  // What the server would do:
  accept() {
    this.readyState = FakeWebSocket.OPEN;
    this.onopen?.();
  }
  deliver(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop() {
    this.readyState = FakeWebSocket.CLOSED;
    this.onclose?.({ code: 1006, reason: "", wasClean: false });
  }
  reply(frame, response = {}, status = "ok") {
    this.deliver([frame[0], frame[1], frame[2], "phx_reply", { status, response }]);
  }
  last(event) {
    return this.sent.findLast((f) => f[3] === event);
  }
}

globalThis.WebSocket = FakeWebSocket;
globalThis.location = { href: "http://127.0.0.1:4000/" };
const { Inbox, PushError, Socket } = await import("../../priv/static/js/phoenix_client.js");

const WAIT_MS = 3_000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(predicate, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
const current = () => FakeWebSocket.all.at(-1);

let sockets = [];
// A socket left connected keeps its heartbeat timer, and with it this process, alive.
function closeAll() {
  for (const s of sockets) s.disconnect();
  sockets = [];
  FakeWebSocket.all = [];
}
beforeEach(closeAll);
after(closeAll);
function open(options) {
  const socket = new Socket("/socket", options);
  sockets.push(socket);
  socket.connect();
  current().accept();
  return socket;
}
async function joined(socket, topic, params, response = {}) {
  const channel = socket.channel(topic, params);
  const joining = channel.join();
  const frame = current().last("phx_join");
  current().reply(frame, response);
  await joining;
  return { channel, frame };
}

describe("phoenix_client", () => {
  test("connects with vsn 2.0.0, the params, and the token as a base64url subprotocol", () => {
    // "??>>" is "Pz8+Pg==" in standard base64: + and = may not appear in a subprotocol.
    open({ authToken: "??>>", params: { device: "web-1" } });
    const ws = current();
    assert.equal(ws.url, "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0&device=web-1");
    assert.deepEqual(ws.protocols, ["phoenix", "base64url.bearer.phx.Pz8-Pg"]);
  });

  test("joins and pushes as V2 frames and matches replies by ref and topic", async () => {
    const socket = open();
    const { channel, frame } = await joined(socket, "room:a", { x: 1 });
    assert.deepEqual(frame, [frame[0], frame[0], "room:a", "phx_join", { x: 1 }]);
    const pushed = channel.push("ping", { n: 1 });
    const out = current().last("ping");
    assert.deepEqual(out, [frame[0], out[1], "room:a", "ping", { n: 1 }]);
    assert.notEqual(out[1], frame[0]);
    // Another topic's reply with the same ref, and a reply to another ref, are not this one's.
    current().deliver([null, out[1], "room:b", "phx_reply", { status: "ok", response: { wrong: true } }]);
    current().deliver([frame[0], "999", "room:a", "phx_reply", { status: "ok", response: { wrong: true } }]);
    current().reply(out, { n: 1 });
    assert.deepEqual(await pushed, { status: "ok", response: { n: 1 } });
    const refused = channel.push("ping", {});
    current().reply(current().last("ping"), { reason: "nope", code: "invalid_input" }, "error");
    assert.deepEqual(await refused, { status: "error", response: { reason: "nope", code: "invalid_input" } });
  });

  test("a push with no reply times out; one in flight when the socket drops fails at once", async () => {
    const socket = open({ timeoutMs: 50 });
    const { channel } = await joined(socket, "room:a", {});
    await assert.rejects(channel.push("ping", {}), (err) => err instanceof PushError && err.kind === "timeout");
    const inFlight = channel.push("ping", {}, { timeoutMs: 5_000 });
    current().drop();
    await assert.rejects(inFlight, (err) => err instanceof PushError && err.kind === "disconnected");
  });

  test("heartbeats on the phoenix topic; a heartbeat left unanswered drops and reconnects the socket", async () => {
    open({ heartbeatMs: 40 });
    const first = current();
    await until(() => first.last("heartbeat"), "a heartbeat");
    const beat = first.last("heartbeat");
    assert.deepEqual(beat, [null, beat[1], "phoenix", "heartbeat", {}]);
    first.reply(beat);
    await until(() => first.sent.filter((f) => f[3] === "heartbeat").length === 2, "a second heartbeat");
    // This one goes unanswered.
    await until(() => first.closedWith, "the socket to be closed");
    assert.deepEqual(first.closedWith, { code: 4000, reason: "heartbeat timeout" });
    await until(() => FakeWebSocket.all.length === 2, "a reconnect");
  });

  test("after a drop the socket reconnects and the channel rejoins with fresh params", async () => {
    const socket = open();
    let n = 0;
    const { channel } = await joined(socket, "user:alice", () => ({ after: n }));
    const joins = [];
    channel.on("join", (r) => joins.push(r));
    n = 7;
    current().drop();
    assert.equal(channel.state, "errored");
    await until(() => FakeWebSocket.all.length === 2, "a reconnect");
    current().accept();
    const rejoin = current().last("phx_join");
    assert.deepEqual(rejoin[4], { after: 7 });
    current().reply(rejoin, { again: true });
    await until(() => joins.length === 1, "the rejoin reply");
    assert.equal(channel.state, "joined");
  });

  test("a push made while the channel is not joined waits for the join", async () => {
    const socket = new Socket("/socket");
    sockets.push(socket);
    const channel = socket.channel("room:a", {});
    channel.join();
    const waiting = channel.push("ping", { early: true }, { timeoutMs: 2_000 });
    socket.connect();
    current().accept();
    current().reply(current().last("phx_join"));
    await until(() => current().last("ping"), "the held push");
    current().reply(current().last("ping"), { late: false });
    assert.deepEqual(await waiting, { status: "ok", response: { late: false } });
  });

  test("frames for an older join of the topic are ignored; phx_error rejoins", async () => {
    const socket = open();
    const { channel, frame } = await joined(socket, "room:a", {});
    const events = [];
    channel.on("shout", (p) => events.push(p));
    current().deliver(["old-ref", null, "room:a", "shout", { stale: true }]);
    current().deliver([null, null, "room:a", "shout", { broadcast: true }]);
    current().deliver([frame[0], null, "room:a", "shout", { mine: true }]);
    current().deliver(["old-ref", "old-ref", "room:a", "phx_close", {}]);
    assert.deepEqual(events, [{ broadcast: true }, { mine: true }]);
    assert.equal(channel.state, "joined");

    const joinsBefore = current().sent.filter((f) => f[3] === "phx_join").length;
    current().deliver([frame[0], frame[0], "room:a", "phx_error", { reason: "channel_crash" }]);
    assert.equal(channel.state, "errored");
    await until(() => current().sent.filter((f) => f[3] === "phx_join").length === joinsBefore + 1, "the rejoin after phx_error");
    const rejoin = current().last("phx_join");
    assert.notEqual(rejoin[0], frame[0]);
    current().reply(rejoin);
    await until(() => channel.state === "joined", "joined again");
  });

  test("the inbox joins after the last offset seen, drops duplicates, hands on broadcasts, and acknowledges with receipt", async () => {
    const socket = open();
    const saved = [];
    const inbox = new Inbox(socket, "alice", { initialOffset: 4, onOffset: (o) => saved.push(o) });
    const seen = [];
    inbox.on("message", (m) => seen.push(m.signal_offset));
    const joining = inbox.join();
    const join = current().last("phx_join");
    assert.deepEqual(join.slice(2), ["user:alice", "phx_join", { after: 4 }]);
    current().reply(join, { last_offset: 6, acked_offset: 4, invites: [] });
    await joining;
    for (const offset of [3, 4, 5, 5, 6, 5]) current().deliver([join[0], null, "user:alice", "message", { signal_offset: offset }]);
    assert.deepEqual(seen, [5, 6]);
    assert.equal(inbox.duplicates, 4);
    assert.deepEqual(saved, [5, 6]);

    // What the server (or its operator) broadcasts besides the inbox's own events is handed on.
    const broadcasts = [];
    const receipts = [];
    inbox.on("broadcast", (event, payload) => broadcasts.push([event, payload]));
    inbox.on("receipt", (r) => receipts.push(r));
    current().deliver([null, null, "user:alice", "notice", { text: "maintenance at noon" }]);
    current().deliver([null, null, "user:alice", "receipt", { method: 3 }]);
    assert.deepEqual(broadcasts, [["notice", { text: "maintenance at noon" }]]);
    assert.deepEqual(receipts, [{ method: 3 }]);

    const receipt = inbox.receipt(6, "read");
    const out = current().last("receipt");
    assert.deepEqual(out[4], { up_to: 6, state: "read" });
    current().reply(out, { acked_offset: 6 });
    assert.equal(await receipt, 6);

    current().drop();
    await until(() => FakeWebSocket.all.length === 2, "a reconnect");
    current().accept();
    assert.deepEqual(current().last("phx_join")[4], { after: 6 });
  });
});
