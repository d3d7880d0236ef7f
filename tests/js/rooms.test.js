// room:* with the official phoenix.js client: join, ping, broadcast, leave, refused join, binary.
import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import {
  WAIT_MS,
  bytes,
  collect,
  connected,
  disconnectAll,
  join,
  push,
  reply,
  sleep,
  transcript,
  waitUntil,
} from "./support/client.js";
import { binaryFrames, jsonFrames } from "./support/frames.js";
import { serverPerFile } from "./support/suite.js";

// Long enough for a stray frame to arrive on loopback, short enough to keep the suite quick.
const QUIET_MS = 300;
const BINARY = [0, 1, 2, 254, 255];
const arrayBuffer = (values) => Uint8Array.from(values).buffer;

const suite = serverPerFile();
afterEach(() => disconnectAll());

/** A connected socket with `topic` joined, asserting the join succeeded. */
async function member(topic, socketOpts = {}) {
  const socket = await connected(suite.server.url, socketOpts);
  const channel = socket.channel(topic, {});
  const joined = await join(channel);
  assert.deepEqual(joined, { status: "ok", response: {} }, `join ${topic}\n${transcript(socket)}`);
  return { socket, channel };
}

describe("official client", () => {
  test("joins room:lobby with {} and ping replies with its own payload", async () => {
    const { socket, channel } = await member("room:lobby", { params: { user_id: "alice", device_name: "node" } });
    assert.equal(channel.state, "joined");

    const pong = await push(channel, "ping", { hello: "world" });
    assert.deepEqual(pong, { status: "ok", response: { hello: "world" } }, transcript(socket));
  });

  test("a broadcast reaches the other member but not the sender", async () => {
    const alice = await member("room:chat");
    const bob = await member("room:chat");
    const aliceGot = collect(alice.channel, "new_msg");
    const bobGot = collect(bob.channel, "new_msg");

    const ack = await push(alice.channel, "new_msg", { body: "hi" });
    assert.deepEqual(ack, { status: "ok", response: {} });

    await waitUntil(() => bobGot.length > 0, WAIT_MS, "bob to receive new_msg");
    // The echo to the sender, if any, would be on the wire by now.
    await sleep(QUIET_MS);
    assert.deepEqual(bobGot, [{ body: "hi" }], transcript(bob.socket));
    assert.deepEqual(aliceGot, [], transcript(alice.socket));
    // Also on the wire: phoenix.js could hide a frame whose join_ref it considers stale.
    assert.deepEqual(jsonFrames(alice.socket, "in", { event: "new_msg" }), [], transcript(alice.socket));
  });

  test("leave replies ok, fires onClose, and the socket keeps working", async () => {
    const { socket, channel } = await member("room:leave-me");
    let closes = 0;
    channel.onClose(() => closes++);

    const left = await reply(channel.leave(WAIT_MS));
    assert.deepEqual(left, { status: "ok", response: {} }, transcript(socket));
    await waitUntil(() => closes > 0, WAIT_MS, "channel onClose");
    assert.equal(channel.state, "closed");

    const other = socket.channel("room:after-leave", {});
    assert.deepEqual(await join(other), { status: "ok", response: {} }, transcript(socket));
    assert.deepEqual(await push(other, "ping", { n: 2 }), { status: "ok", response: { n: 2 } });
    // The left topic can be joined again with a fresh Channel object.
    const again = socket.channel("room:leave-me", {});
    assert.deepEqual(await join(again), { status: "ok", response: {} }, transcript(socket));
  });

  test("joining room: is refused with a reason, and leave() stops the rejoin loop", async () => {
    const socket = await connected(suite.server.url);
    const channel = socket.channel("room:", {});

    const refused = await join(channel);
    assert.deepEqual(refused, { status: "error", response: { reason: "room name must not be empty", code: "invalid_topic" } }, transcript(socket));
    assert.equal(channel.state, "errored");

    // phoenix.js would retry the join after 1 s (then 2 s, 5 s, ...) until told to leave.
    const left = await reply(channel.leave(WAIT_MS));
    assert.equal(left.status, "ok");
    assert.equal(channel.state, "closed");
    await sleep(1_200);
    assert.equal(jsonFrames(socket, "out", { topic: "room:", event: "phx_join" }).length, 1, transcript(socket));
    assert.ok(socket.isConnected(), "a refused join must not cost the socket");
  });

  test("binary ping replies with an ArrayBuffer holding the same bytes", async () => {
    const { socket, channel } = await member("room:binary-ping");

    const pong = await push(channel, "ping", arrayBuffer(BINARY));
    assert.equal(pong.status, "ok", transcript(socket));
    assert.ok(pong.response instanceof ArrayBuffer, `response is ${Object.prototype.toString.call(pong.response)}`);
    assert.deepEqual(bytes(pong.response), BINARY);
  });

  test("binary broadcast arrives at the other member as an ArrayBuffer", async () => {
    const alice = await member("room:binary");
    const bob = await member("room:binary");
    const aliceGot = collect(alice.channel, "blob");
    const bobGot = collect(bob.channel, "blob");

    const ack = await push(alice.channel, "blob", arrayBuffer(BINARY));
    assert.equal(ack.status, "ok", transcript(alice.socket));

    await waitUntil(() => bobGot.length > 0, WAIT_MS, "bob to receive blob");
    await sleep(QUIET_MS);
    assert.equal(bobGot.length, 1);
    assert.ok(bobGot[0] instanceof ArrayBuffer, `payload is ${Object.prototype.toString.call(bobGot[0])}`);
    assert.deepEqual(bytes(bobGot[0]), BINARY);
    assert.equal(aliceGot.length, 0, transcript(alice.socket));
  });
});

// The client tests above pass as long as phoenix.js copes; these pin the exact frames Phoenix
// would send (see shared/reference/phoenix-protocol.md §2-§3), which other clients may rely on.
describe("wire frames match Phoenix", () => {
  test("join and ping replies echo join_ref and ref", async () => {
    const { socket, channel } = await member("room:wire");
    await push(channel, "ping", { a: 1 });

    const [joinMsg] = jsonFrames(socket, "out", { event: "phx_join" });
    const [pingMsg] = jsonFrames(socket, "out", { event: "ping" });
    const replies = jsonFrames(socket, "in", { event: "phx_reply" });
    assert.deepEqual(
      replies.find((m) => m[1] === joinMsg[1]),
      [joinMsg[0], joinMsg[1], "room:wire", "phx_reply", { status: "ok", response: {} }],
      transcript(socket),
    );
    assert.deepEqual(
      replies.find((m) => m[1] === pingMsg[1]),
      [pingMsg[0], pingMsg[1], "room:wire", "phx_reply", { status: "ok", response: { a: 1 } }],
      transcript(socket),
    );
  });

  test("a broadcast has null join_ref and ref", async () => {
    const alice = await member("room:wire-bcast");
    const bob = await member("room:wire-bcast");
    await push(alice.channel, "new_msg", { body: "x" });
    await waitUntil(() => jsonFrames(bob.socket, "in", { event: "new_msg" }).length, WAIT_MS, "broadcast frame");
    assert.deepEqual(
      jsonFrames(bob.socket, "in", { event: "new_msg" }),
      [[null, null, "room:wire-bcast", "new_msg", { body: "x" }]],
      transcript(bob.socket),
    );
  });

  test("leave is answered by an ok reply, then phx_close with join_ref = ref = the join's ref", async () => {
    const { socket, channel } = await member("room:wire-leave");
    const joinRef = channel.joinRef();
    await reply(channel.leave(WAIT_MS));
    await waitUntil(
      () => jsonFrames(socket, "in", { event: "phx_close" }).length,
      WAIT_MS,
      `phx_close after leave\n${transcript(socket)}`,
    );
    const [leaveMsg] = jsonFrames(socket, "out", { event: "phx_leave" });
    // Rooms track presence; its frames are checked in presence.test.js, not here.
    const incoming = jsonFrames(socket, "in", { topic: "room:wire-leave" })
      .filter((m) => m[3] !== "phx_reply" || m[1] !== joinRef)
      .filter((m) => !m[3].startsWith("presence_"));
    assert.deepEqual(
      incoming,
      [
        [joinRef, leaveMsg[1], "room:wire-leave", "phx_reply", { status: "ok", response: {} }],
        [joinRef, joinRef, "room:wire-leave", "phx_close", {}],
      ],
      transcript(socket),
    );
  });

  test("a refused join gets an error reply with its join_ref and nothing after it", async () => {
    const socket = await connected(suite.server.url);
    const channel = socket.channel("room:", {});
    await join(channel);
    const joinRef = channel.joinRef();
    channel.leave(WAIT_MS);
    await sleep(QUIET_MS);
    const [leaveMsg] = jsonFrames(socket, "out", { event: "phx_leave" });
    assert.deepEqual(
      jsonFrames(socket, "in", { topic: "room:" }),
      [
        [joinRef, joinRef, "room:", "phx_reply", { status: "error", response: { reason: "room name must not be empty", code: "invalid_topic" } }],
        // Phoenix answers a leave for a topic without a channel with ok, echoing the leave's join_ref.
        [leaveMsg[0], leaveMsg[1], "room:", "phx_reply", { status: "ok", response: {} }],
      ],
      transcript(socket),
    );
  });

  test("binary ping is a kind-0 push answered by a kind-1 reply; binary broadcast is kind 2", async () => {
    const alice = await member("room:wire-bin");
    const bob = await member("room:wire-bin");
    await push(alice.channel, "ping", arrayBuffer(BINARY));
    await push(alice.channel, "blob", arrayBuffer(BINARY));
    await waitUntil(() => binaryFrames(bob.socket, "in").length, WAIT_MS, `binary broadcast\n${transcript(bob.socket)}`);

    const [pingOut] = binaryFrames(alice.socket, "out");
    assert.deepEqual(pingOut, {
      kind: 0,
      join_ref: alice.channel.joinRef(),
      ref: pingOut.ref,
      topic: "room:wire-bin",
      event: "ping",
      payload: BINARY,
    });
    assert.deepEqual(
      binaryFrames(alice.socket, "in"),
      [{ kind: 1, join_ref: pingOut.join_ref, ref: pingOut.ref, topic: "room:wire-bin", status: "ok", payload: BINARY }],
      transcript(alice.socket),
    );
    assert.deepEqual(
      binaryFrames(bob.socket, "in"),
      [{ kind: 2, topic: "room:wire-bin", event: "blob", payload: BINARY }],
      transcript(bob.socket),
    );
  });
});
